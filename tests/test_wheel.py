"""The path most users take, ``pip install patchwidget`` (issue 31): the sdist and the wheel are built as ``make
dist`` builds them, the wheel is checked for what it must carry (the front-end bundle, the bundled model,
``py.typed``) and must not (the tests), a wheel is built again from the sdist with no node on the PATH, and the
wheel is installed into a fresh virtual environment outside the source tree, with the lock as constraints, where
``tests/wheel_smoke.py`` and the ``patchwidget`` command run. Deselect with ``-m 'not wheel'`` (about a minute:
the install is most of it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

import patchwidget as pw
from patchwidget.data.demo_data import IOI_EXAMPLE
from patchwidget.ui.protocol import fingerprint

from .close import assert_close

pytestmark = pytest.mark.wheel

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock.txt"
SMOKE = Path(__file__).resolve().parent / "wheel_smoke.py"
MUST_CARRY = [
    "patchwidget/__init__.py",
    "patchwidget/static/widget.js",
    "patchwidget/static/widget.css",
    "patchwidget/ui/standalone.html",
    "patchwidget/data/demo_model/config.json",
    "patchwidget/data/demo_model/model.safetensors",
    "patchwidget/data/demo_model/tokenizer.json",
    "patchwidget/data/demo_model/tokenizer_config.json",
]


def run(cmd: list[str], what: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; on a non-zero exit or a timeout, fail saying ``what`` failed, with the tail of its output."""
    shown = " ".join(map(str, cmd))
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{what} took more than {timeout:.0f} s: {shown}\n{_tail(err.stdout)}\n{_tail(err.stderr)}")
    print(f"{what}: {time.perf_counter() - start:.1f} s")  # shown with -s or -rP: where the minute goes
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {done.returncode}): {shown}\n"
            f"--- stdout (tail) ---\n{_tail(done.stdout)}\n--- stderr (tail) ---\n{_tail(done.stderr)}"
        )
    return done


def _tail(text: str | bytes | None, chars: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-chars:]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what could point a python at the source tree or this venv, and
    with byte-code written (the throwaway venv's: the first run compiles what later runs import)."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return {**env, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> SimpleNamespace:
    """The sdist and the wheel, built as ``make dist`` builds them, and a second wheel built from the sdist
    with an empty PATH (no npm, no node): the sdist must carry the built bundle."""
    out = tmp_path_factory.mktemp("dist")
    python = sys.executable
    run([python, "-m", "hatchling", "build", "--target", "sdist", "--directory", str(out)], "sdist build", cwd=REPO)
    wheel_cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir"]
    run([*wheel_cmd, str(out), str(REPO)], "wheel build", cwd=REPO)
    (sdist,) = out.glob("patchwidget-*.tar.gz")
    (wheel,) = out.glob("patchwidget-*.whl")
    from_sdist = tmp_path_factory.mktemp("from-sdist")
    no_node = tmp_path_factory.mktemp("empty-bin")
    run([*wheel_cmd, str(from_sdist), str(sdist)], "wheel build from the sdist", env=clean_env(PATH=str(no_node)))
    (sdist_wheel,) = from_sdist.glob("patchwidget-*.whl")
    return SimpleNamespace(sdist=sdist, wheel=wheel, sdist_wheel=sdist_wheel)


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment outside the source tree with the wheel installed, its dependencies at the
    lock's versions (pip may reuse its cache and the local torch wheels)."""
    root = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", str(root)], "venv creation")
    python = root / "bin" / "python"
    # --no-compile: byte-compiling torch's thousands of files was half the install (about 20 of 45 s); the smoke
    # run compiles only what it imports, and writes it for the runs after it (clean_env).
    install = [str(python), "-m", "pip", "install", "--no-compile", "--constraint", str(LOCK)]
    run([*install, str(dist.wheel)], "pip install of the wheel", cwd=root.parent, env=clean_env())
    return root


@pytest.fixture(scope="module")
def smoke(venv, tmp_path_factory) -> dict:
    """``tests/wheel_smoke.py``, copied out of the source tree and run there with the venv's python."""
    work = tmp_path_factory.mktemp("smoke")
    script = shutil.copy(SMOKE, work / SMOKE.name)
    done = run([str(venv / "bin" / "python"), script], "smoke script in the venv", cwd=work, env=clean_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_wheel_carries_the_bundle_the_model_and_py_typed_and_no_tests(dist):
    with zipfile.ZipFile(dist.wheel) as wheel:
        sizes = {info.filename: info.file_size for info in wheel.infolist()}
        bundle = wheel.read("patchwidget/static/widget.js").decode() if "patchwidget/static/widget.js" in sizes else ""
        entry_points = wheel.read(f"patchwidget-{pw.__version__}.dist-info/entry_points.txt").decode()
    missing = [name for name in MUST_CARRY if not sizes.get(name)]
    assert not missing, f"the wheel lacks (or holds empty) {missing}"
    assert "patchwidget/py.typed" in sizes, "the wheel lacks py.typed (an empty marker file, PEP 561)"
    assert fingerprint() in bundle, "the wheel's widget.js was built for another protocol: rebuild it (make js)"
    stray = [name for name in sizes if not name.startswith(("patchwidget/", "patchwidget-"))]
    assert not stray, f"the wheel holds files outside the package: {stray}"
    assert not [name for name in sizes if "tests/" in name or "/test_" in name]
    assert "patchwidget = patchwidget.cli:main" in entry_points


def test_the_sdist_carries_the_js_sources_and_the_built_bundle(dist):
    import tarfile

    with tarfile.open(dist.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    wanted = ["pyproject.toml", "js/package.json", "js/package-lock.json", "js/src/index.js"]
    wanted += ["patchwidget/static/widget.js", "patchwidget/static/widget.css", "requirements/lock.txt"]
    assert not [name for name in wanted if name not in names], sorted(names)
    assert not [name for name in names if name.startswith(("js/node_modules/", ".venv/", "dist/"))]


def test_a_wheel_built_from_the_sdist_without_node_is_the_same_wheel(dist):
    with zipfile.ZipFile(dist.wheel) as direct, zipfile.ZipFile(dist.sdist_wheel) as again:
        names = sorted(direct.namelist())
        assert names == sorted(again.namelist())
        for name in ("patchwidget/static/widget.js", "patchwidget/data/demo_model/model.safetensors"):
            if name in names:  # one missing from both is the first test's failure
                assert direct.read(name) == again.read(name), name


def test_the_installed_wheel_is_the_one_imported_and_patches_as_the_source_does(smoke, venv, demo):
    assert Path(smoke["file"]).resolve().is_relative_to(venv.resolve()), f"imported {smoke['file']}, not the venv's"
    assert not Path(smoke["file"]).resolve().is_relative_to(REPO)
    assert smoke["version"] == pw.__version__
    here = pw.patch(demo, **IOI_EXAMPLE, site="resid_pre", layers=[0, 2])
    assert_close(smoke["values"], here.values, 1e-5, "the installed wheel patches to other numbers")
    assert_close(smoke["clean"], here.clean_baseline, 1e-5)
    assert_close(smoke["corrupt"], here.corrupt_baseline, 1e-5)


def test_the_installed_widget_loads_its_bundle(smoke, venv):
    assert Path(smoke["static"]).resolve().is_relative_to(venv.resolve())
    assert smoke["bundle_bytes"] > 10_000 and smoke["bundle_is_file"]
    assert smoke["css_bytes"] > 0
    assert smoke["fingerprint"] == fingerprint() and smoke["fingerprint_in_bundle"]


def test_the_installed_command_line_works(venv, tmp_path):
    command = str(venv / "bin" / "patchwidget")
    env = clean_env()
    version = run([command, "--version"], "patchwidget --version", cwd=tmp_path, env=env)
    assert version.stdout.strip() == f"patchwidget {pw.__version__}"
    doctor = run([command, "doctor"], "patchwidget doctor", cwd=tmp_path, env=env)
    assert [line.split()[0] for line in doctor.stdout.splitlines()][:4] == ["ok"] * 4, doctor.stdout
    table = run([command, "run", "--layers", "0,3"], "patchwidget run", cwd=tmp_path, env=env).stdout.splitlines()
    assert table[0].startswith("resid_pre · denoise") and table[1].split() == ["L0", "L3"], table
    assert len(table) == 2 + 14 and table[2].startswith("When (0)"), table
