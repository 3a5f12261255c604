"""The patchwidget command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import patchwidget as pw
from patchwidget.cli import main

from .close import assert_close, near

FACT = [
    "--clean",
    "The capital of France is",
    "--corrupt",
    "The capital of Japan is",
    "--answer",
    "Paris",
    "--wrong",
    "Tokyo",
]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "patchwidget.cli", *args], capture_output=True, text=True, timeout=300)


def test_json_output_matches_the_api(demo, tmp_path, capsys):
    out = tmp_path / "grid.json"
    assert main(["run", *FACT, "--site", "attn_out", "--out", str(out)]) == 0
    saved = pw.PatchResult.load(out)
    direct = pw.patch(
        demo,
        "The capital of France is",
        "The capital of Japan is",
        answer="Paris",
        wrong="Tokyo",
        site="attn_out",
    )
    assert_close(saved.values, direct.values, 1e-6)  # the computed values, in the one default metric
    assert f"wrote {out}" in capsys.readouterr().out


def test_remote_simulation_and_memory_budget_options(demo, tmp_path):
    out = tmp_path / "grid.json"
    assert (
        main(["run", *FACT, "--remote", "local", "--memory-budget", "50", "--batch-size", "3", "--out", str(out)]) == 0
    )
    direct = pw.patch(
        demo,
        "The capital of France is",
        "The capital of Japan is",
        answer="Paris",
        wrong="Tokyo",
    )
    assert_close(pw.PatchResult.load(out).values, direct.values, 1e-6)


def test_demo_table_png_and_html(tmp_path, capsys):
    assert main(["run"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0] == (  # what is patched, the answers with their tokens
        "resid_pre · denoise · logit_diff, normalised (clean 1, corrupted 0) · answer 'Mary' ['Mary'] "
        "vs wrong 'John' ['John']"
    )
    assert lines[1].split() == ["L0", "L1", "L2", "L3"] and lines[-1].startswith("to (13)")  # one line per token
    ioi_texts = (
        "When Mary and John went to the store , John gave a drink to",
        "When Mary and John went to the store , Mary gave a drink to",
    )
    ioi = pw.patch(
        pw.load_model(),
        *ioi_texts,
        answer="Mary",
        wrong="John",
        metric="logit_diff_norm",
    )
    assert float(lines[-1].split()[-1]) == near(ioi.values[-1, -1], 0.001)  # the table shows the grid, normalised
    assert main(["run", "--scale", "raw"]) == 0  # the same grid as computed: the raw logit difference
    raw = pw.patch(pw.load_model(), ioi_texts[0], ioi_texts[1], answer="Mary", wrong="John")
    assert float(capsys.readouterr().out.splitlines()[-1].split()[-1]) == near(raw.values[-1, -1], 0.001)
    assert abs(raw.values[-1, -1] - ioi.values[-1, -1]) > 0.5  # the two views differ where it is checked
    png = tmp_path / "grid.png"
    assert main(["run", "--out", str(png), "--site", "head_out", "--by-position", "no"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = tmp_path / "grid.html"
    assert main(["run", *FACT, "--out", str(page)]) == 0
    text = page.read_text()
    embedded = text.split('<script type="application/json" id="pw-data">', 1)[1].split("</script>", 1)[0]
    data = json.loads(embedded)  # the page's data: the computed grid, the same numbers as the API's
    (state,) = data["states"]
    (panel,) = state["view"]["panels"]
    direct = pw.patch(pw.load_model(), *FACT[1::2][:2], answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    assert panel["id"] == "resid_pre" and panel["cols"] == [f"{t} ({i})" for i, t in enumerate(direct.tokens)]
    assert_close(np.array(panel["values"], dtype=float), direct.values, 1e-5)
    assert state["crumb"] == {"label": "resid_pre"} and data["controls"]["site"] == "resid_pre"


def test_help_has_examples():
    result = run_cli("run", "--help")
    assert result.returncode == 0 and "examples:" in result.stdout and "--out grid.png" in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--clean", "a"], "give all of --clean, --corrupt, --answer and --wrong"),
        (["run", "--site", "nope"], "invalid choice: 'nope'"),
        (["run", "--out", "grid.xlsx"], "--out must end in one of"),
        (["run", "--layers", "1,x"], "expected comma-separated integers"),
        (["run", *FACT[:6], "--wrong", "Paris"], "answer and wrong of pair 0 are the same token"),
        (["run", "--layers", "9"], "layers index 9 is out of range"),
        (["run", "--remote", "ndif"], "--remote runs a hub model on a server: give its name with --model"),
        (["run", "--memory-budget", "0.001"], "memory_budget=0.00 MB is too small"),
    ],
)
def test_wrong_arguments_give_one_line_and_status_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("patchwidget") and message in last


def test_template_prompts_of_different_lengths(demo, capsys, tmp_path):
    template = "When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to"
    clean, corrupt = "IO=Mary,S1=John,PLACE=store,S2=John", "IO=Mary,S1=John,PLACE=silver castle,S2=Anna"
    args = [
        "run",
        "--template",
        template,
        "--clean",
        clean,
        "--corrupt",
        corrupt,
        "--answer",
        "Mary",
        "--wrong",
        "John",
    ]
    assert main([*args, "--metric", "logit_diff", "--scale", "raw"]) == 0
    table = capsys.readouterr().out.splitlines()
    t = pw.Template(template)
    direct = pw.patch(
        demo,
        t.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
        t.fill(IO="Mary", S1="John", PLACE="silver castle", S2="Anna"),
        answer="Mary",
        wrong="John",
        metric="logit_diff",
    )
    n = len(direct.coords["layer"])  # each line: a span's label (may hold spaces), then one value per layer
    rows = {
        " ".join(line.split()[:-n]): [float(x) for x in line.split()[-n:]] for line in table[2:]
    }  # after what is patched and the layers
    assert list(rows) == direct.coords["span"]
    assert_close(rows["PLACE"], direct.values[:, direct.coords["span"].index("PLACE")], 1e-3)
    page = tmp_path / "spans.html"
    assert main([*args, "--out", str(page)]) == 0
    text = page.read_text()
    data = json.loads(text.split('<script type="application/json" id="pw-data">', 1)[1].split("</script>", 1)[0])
    (panel,) = data["states"][0]["view"]["panels"]
    assert panel["col_dim"] == "span" and panel["cols"] == direct.coords["span"]


@pytest.mark.parametrize(
    ("clean", "message"),
    [
        ("IO=Mary,S1=John,S2=John", "missing"),
        ("IO=Mary,S1=John,PLACE=store,S2=John,X=1", "unknown"),
        ("Mary", "slot values"),
    ],
)
def test_template_slot_errors_give_one_line_and_status_2(clean, message, capsys):
    args = ["run", "--template", "When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to"]
    args += ["--clean", clean, "--corrupt", "IO=Mary,S1=John,PLACE=park,S2=Anna", "--answer", "Mary", "--wrong", "John"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.lower() and err.strip().count("\n") <= 1


def test_version_is_the_packages():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"patchwidget {pw.__version__}"
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert pw.__version__ == re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE)[1]


def test_the_page_refuses_the_normalised_metric_before_loading_a_model(tmp_path):
    """The widget shows the normalised view as its scale: the page says so at once, not in a traceback."""
    result = run_cli("run", "--metric", "logit_diff_norm", "--out", str(tmp_path / "grid.html"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "use --metric logit_diff" in result.stderr and not (tmp_path / "grid.html").exists()


def test_answers_of_several_tokens(demo, tmp_path, capsys):
    """``--answer "Paris is"`` is scored as a sequence, as ``pw.patch`` scores it; the table says the answers."""
    args = ["run", *FACT[:4], "--answer", "Paris is", "--wrong", "Tokyo", "--site", "attn_out"]
    out = tmp_path / "grid.json"
    assert main([*args, "--out", str(out)]) == 0
    direct = pw.patch(
        demo, "The capital of France is", "The capital of Japan is", answer="Paris is", wrong="Tokyo", site="attn_out"
    )
    assert_close(pw.PatchResult.load(out).values, direct.values, 1e-6)
    assert direct.settings["answer"] == ["Paris is"]
    capsys.readouterr()
    assert main(args) == 0
    assert (
        capsys.readouterr().out.splitlines()[0].endswith("answer 'Paris is' ['Paris', 'is'] vs wrong 'Tokyo' ['Tokyo']")
    )
