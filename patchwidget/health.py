"""Is this machine ready? One line per check, for a teacher preparing thirty laptops.

``patchwidget doctor`` (and ``pw.doctor()`` in a notebook cell) checks the Python and
the installed versions of what patchwidget needs against its requirements, that the
front-end bundle speaks this package's protocol, that a patch on the bundled model
gives the number it gave when this release was tested, which notebook front ends can
draw the widget here, and, with an NDIF API key set (or a server named), whether the
server answers. Each check is ``ok``, ``warn`` (works, with a hint), ``skip`` or
``FAIL``; the command exits 1 when any check fails.

Example:
    >>> report = doctor()                  # doctest: +SKIP
    >>> print(report)                      # doctest: +SKIP
    ok    python: 3.11.9
    ...
    >>> report.ok                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.remote import check_server_version, server_nnsight
from .errors import RemoteVersionError
from .ui.export import STATIC
from .ui.protocol import fingerprint

# What ``patch`` gives on the bundled model for the bundled IOI pair (resid_pre, layer 1, the "John" at
# position 9, logit difference; ``pw.patch(pw.load_model(), **demo_data.IOI_EXAMPLE, layers=[1])``), with the
# runs' own logit differences: a broken install, other weights or a changed engine give other numbers.
EXPECTED = {"clean": 5.0026, "corrupt": -2.8779, "L1 John (9)": 1.4909}
TOLERANCE = 1e-3  # relative to the clean run's logit difference: float32 differs in the last bits between CPUs
PACKAGES = ("torch", "transformers", "nnsight", "anywidget")


@dataclass(frozen=True)
class Check:
    """One line of the report: ``state`` is "ok", "warn", "skip" or "FAIL"."""

    name: str
    state: str
    detail: str

    def __str__(self) -> str:
        return f"{self.state:<5} {self.name}: {self.detail}"


@dataclass
class Report:
    """The checks, in order; ``ok`` unless one failed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.state != "FAIL" for c in self.checks)

    def __str__(self) -> str:
        return "\n".join(map(str, self.checks))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # a notebook cell shows the lines, not a repr
        printer.text(str(self))


def check_python() -> Check:
    """The interpreter's version against the package's ``requires-python``."""
    from packaging.specifiers import SpecifierSet

    version = ".".join(map(str, sys.version_info[:3]))
    wanted = metadata.metadata("patchwidget").get("Requires-Python") or ""
    if version in SpecifierSet(wanted):
        return Check("python", "ok", version)
    return Check("python", "FAIL", f"{version}, but patchwidget needs Python {wanted}")


def check_packages() -> Check:
    """Each requirement of the package installed at a version its range allows; the versions said."""
    from packaging.requirements import Requirement

    found, wrong = [], []
    for line in metadata.requires("patchwidget") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra (dev) or another platform's
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{req.name} is not installed (needs {req}): pip install '{req}'")
            continue
        if req.name in PACKAGES:
            found.append(f"{req.name} {version}")
        if not req.specifier.contains(version, prereleases=True):
            wrong.append(f"{req.name} {version} is outside {req}: pip install '{req}'")
    if wrong:
        return Check("packages", "FAIL", "; ".join(wrong))
    found.sort(key=lambda text: PACKAGES.index(text.split()[0]))
    return Check("packages", "ok", ", ".join([f"patchwidget {metadata.version('patchwidget')}", *found]))


def check_bundle(static: Path = STATIC) -> Check:
    """The front-end bundle is there and was built for this package's protocol (``protocol.fingerprint``)."""
    bundle = static / "widget.js"
    if not bundle.is_file():
        return Check("front end", "FAIL", f"no bundle at {bundle}: reinstall patchwidget (or, from a clone, make js)")
    if fingerprint() not in bundle.read_text(encoding="utf-8", errors="replace"):
        return Check(
            "front end",
            "FAIL",
            f"{bundle} was built for another version of the widget protocol than this package's "
            f"({fingerprint()}): the page would misread what Python sends. Reinstall patchwidget, or from a "
            "clone rebuild it (cd js && npm run build)",
        )
    return Check("front end", "ok", f"{bundle.name} ({bundle.stat().st_size // 1024} KiB), protocol {fingerprint()}")


def check_patch(model: Any = None) -> Check:
    """A patch on the bundled model (or ``model``, which must be it) gives the stored numbers."""
    from .data.demo_data import IOI_EXAMPLE
    from .data.models import load_model
    from .grids.patch import patch

    start = time.perf_counter()
    try:
        result = patch(model if model is not None else load_model(), **IOI_EXAMPLE, site="resid_pre", layers=[1])
    except Exception as err:  # a doctor reports what broke instead of raising it
        return Check("patch", "FAIL", f"a patch on the bundled model raised {type(err).__name__}: {err}")
    took = time.perf_counter() - start
    got = {
        "clean": float(result.clean_baseline[0]),
        "corrupt": float(result.corrupt_baseline[0]),
        "L1 John (9)": float(result.values[0, 9]),
    }
    scale = abs(EXPECTED["clean"]) * TOLERANCE
    off = [f"{k} {got[k]:.4f} (expected {v:.4f})" for k, v in EXPECTED.items() if abs(got[k] - v) > scale]
    if off:
        return Check("patch", "FAIL", "the bundled model gives other numbers than when tested: " + ", ".join(off))
    return Check(
        "patch", "ok", f"the bundled model's IOI pair, {len(result.values[0])} cells in {took:.2f} s, as tested"
    )


def check_front_ends() -> Check:
    """Which notebook front ends can draw the widget here, with a hint for the one in use."""
    import os

    have = {name: importlib.util.find_spec(module) is not None for name, module in FRONT_ENDS.items()}
    extension = any((Path(p) / "labextensions" / "anywidget").is_dir() for p in _jupyter_data_paths())
    hints = []
    if "google.colab" in sys.modules:
        hints.append("Colab: run `from google.colab import output; output.enable_custom_widget_manager()` first")
    if os.environ.get("VSCODE_PID") or os.environ.get("VSCODE_CWD"):
        hints.append("VS Code: its Jupyter extension draws the widget; trust the notebook")
    if have["marimo"]:
        hints.append("marimo: show it as mo.ui.anywidget(pw.explore(...))")
    lab = [name for name in ("JupyterLab", "Notebook 7") if have[name]]
    if lab and not extension:
        return Check(
            "notebook",
            "warn",
            f"{' and '.join(lab)} installed, but not anywidget's extension for them: the widget would show as "
            "text; reinstall anywidget in the environment that runs Jupyter",
        )
    where = [*lab, *(["marimo"] if have["marimo"] else [])] or ["no notebook front end installed here"]
    return Check("notebook", "ok", "; ".join([", ".join(where), *hints]))


FRONT_ENDS = {"JupyterLab": "jupyterlab", "Notebook 7": "notebook", "marimo": "marimo"}


def _jupyter_data_paths() -> list[str]:
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:  # no Jupyter here at all
        return [str(Path(sys.prefix) / "share" / "jupyter")]
    return jupyter_path()


def check_ndif(host: str | None = None) -> Check:
    """With an NDIF API key set (or ``host`` named), whether the server answers its ``/status``."""
    import httpx
    from nnsight import CONFIG

    if host is None and not CONFIG.API.APIKEY:
        return Check("NDIF", "skip", "no API key set (nnsight.CONFIG.set_default_api_key(...)): remote=True unchecked")
    url = (host or CONFIG.API.HOST).rstrip("/")
    try:
        response = httpx.get(f"{url}/status", timeout=5.0)
        response.raise_for_status()
        deployments = response.json().get("deployments", {})
    except Exception as err:  # unreachable, refused, not JSON: each said as it came
        return Check("NDIF", "FAIL", f"{url} does not answer ({type(err).__name__}: {err})")
    answers = f"{url} answers: {len(deployments)} model deployment(s)"
    try:
        check_server_version(url)  # the one check remote=True makes before sending anything
    except RemoteVersionError as err:
        return Check("NDIF", "FAIL", f"{answers}, but {err}")
    server = server_nnsight(url)
    said = f"nnsight {server}, as here" if server else "its nnsight version not said (no /env)"
    return Check("NDIF", "ok", f"{answers}; {said}")


CHECKS: tuple[Callable[..., Check], ...] = (check_python, check_packages, check_bundle, check_patch, check_front_ends)


def doctor(model: Any = None, ndif: str | None = None) -> Report:
    """Every check, in order (see the module's docstring); ``model`` replaces the freshly loaded bundled
    model in the patch check, ``ndif`` names a server to ask instead of nnsight's configured one.

    Example:
        >>> print(pw.doctor())  # doctest: +SKIP
        ok    python: 3.11.9
        ok    packages: patchwidget 0.1.0, torch 2.13.0+cpu, transformers 5.3.0, nnsight 0.8.1, anywidget 0.11.0
        ...
    """
    report = Report()
    for check in CHECKS:
        report.checks.append(check(model) if check is check_patch else check())
    report.checks.append(check_ndif(ndif))
    return report
