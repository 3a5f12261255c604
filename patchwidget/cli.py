"""The ``patchwidget`` command: patching from a shell, with a progress bar.

Example:
    $ patchwidget run --clean "The capital of France is" --corrupt "The capital of Japan is" \\
          --answer Paris --wrong Tokyo --out grid.png
"""

from __future__ import annotations

import argparse
import math
import sys
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .grids.result import PatchResult

EXAMPLES = """examples:
  patchwidget run                                   # the bundled model's IOI example, printed as a table
  patchwidget run --clean "The capital of France is" --corrupt "The capital of Japan is" \\
                  --answer Paris --wrong Tokyo --out grid.png
  patchwidget run --site head_out --by-position no --out heads.json
  patchwidget run --template "When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to" \\
                  --clean "IO=Mary,S1=John,PLACE=store,S2=John" \\
                  --corrupt "IO=Mary,S1=John,PLACE=silver castle,S2=Anna" --answer Mary --wrong John
  patchwidget run --model openai-community/gpt2 --clean "..." --corrupt "..." \\
                  --answer " Mary" --wrong " John"   # a hub model (needs network)
  patchwidget run --model meta-llama/Llama-3.1-8B --remote ndif ...   # on NDIF, no weights loaded here
"""

OUTPUTS = (".png", ".svg", ".pdf", ".json", ".npz", ".html")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``patchwidget`` command."""
    from .core.engine import DIRECTIONS
    from .core.metrics import DEFAULT, METRICS
    from .core.sites import SITES
    from .ui.scale import DEFAULT_SCALE, SCALE_LABELS, SCALES

    parser = argparse.ArgumentParser(
        prog="patchwidget",
        description="Activation patching of language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"patchwidget {version('patchwidget')}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="patch one site over a grid and show or save the result",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--clean", help="the clean prompt (default: the bundled IOI example)")
    run.add_argument("--corrupt", help="the corrupted prompt, same number of tokens")
    run.add_argument(
        "--answer", help="the answer the clean prompt should predict: one token or several (scored as a sequence)"
    )
    run.add_argument("--wrong", help="the answer the corrupted prompt predicts: one token or several")
    run.add_argument(
        "--template",
        help="a prompt template with {SLOT}s; --clean and --corrupt then give slot values, e.g. 'IO=Mary,S=John' "
        "(the two prompts may differ in length; the grid is by span)",
    )
    run.add_argument("--model", default=None, help="hub name or folder (default: the bundled demo model)")
    run.add_argument("--site", default="resid_pre", choices=list(SITES))
    run.add_argument("--metric", default=DEFAULT, choices=list(METRICS))
    run.add_argument(
        "--scale",
        default=DEFAULT_SCALE,
        choices=list(SCALES),
        help=f"how the table, the figure and the page show the numbers: {SCALE_LABELS['normalized']} or the raw "
        "metric (.json and .npz keep the computed values; PatchResult.normalized() gives the view)",
    )
    run.add_argument("--direction", default="denoise", choices=list(DIRECTIONS))
    run.add_argument("--layers", type=_int_list, help="comma-separated layer indices, e.g. 0,3")
    run.add_argument("--by-position", choices=("yes", "no"), help="one cell per token, or all tokens at once")
    run.add_argument("--batch-size", type=int, default=64)
    run.add_argument("--memory-budget", type=float, metavar="MB", help="fit the batches into about this many MB")
    run.add_argument(
        "--remote", metavar="WHERE", help="'ndif' (needs an nnsight API key), 'local' (simulated here) or a server URL"
    )
    run.add_argument("--out", type=Path, help=f"write the result: {', '.join(OUTPUTS)}")
    doctor = sub.add_parser(
        "doctor",
        help="check that this machine is ready: versions, the front end, a patch on the bundled model, NDIF",
        description="One line per check (ok, warn, skip, FAIL); exit status 1 when a check fails.",
    )
    doctor.add_argument("--ndif", metavar="URL", help="ask this nnsight server instead of the configured NDIF host")
    return parser


def format_table(result: PatchResult) -> str:
    """The grid as text, one line per token (or per column of the grid)."""
    from .plot import grid_2d

    table, rows, cols = grid_2d(result)
    width = max(len(c) for c in cols) + 1
    lines = [" " * width + "".join(f"{r:>9}" for r in rows)]
    for j, col in enumerate(cols):
        lines.append(f"{col:<{width}}" + "".join(f"{table[i, j]:9.3f}" for i in range(len(rows))))
    return "\n".join(lines)


def describe(result: PatchResult, tokenizer: Any, scale: str) -> str:
    """The line above a table: what was patched and measured, the answers as text with their tokens.

    Example:
        >>> describe(result, model.tokenizer, "normalized")   # doctest: +SKIP
        "attn_out · denoise · logit_diff, normalised (clean 1, corrupted 0) · answer 'Paris is' ['Paris', 'is'] ..."
    """
    from .data.templates import token_strings

    s = result.settings
    tokens = lambda text: token_strings(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"])
    answer, wrong = s["answer"][0], s["wrong"][0]
    more = len(s["answer"]) - 1
    shown = ", normalised (clean 1, corrupted 0)" if scale == "normalized" else ""
    return (
        f"{s['site']} · {s['direction']} · {s['metric']}{shown} · answer {answer!r} {tokens(answer)} "
        f"vs wrong {wrong!r} {tokens(wrong)}" + (f" (pair 0; {more} more)" if more else "")
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _fill(parser: argparse.ArgumentParser, template: str, clean: str, corrupt: str) -> dict:
    """The clean and corrupted prompts from ``--template`` and slot values ``NAME=value,NAME=value``."""
    from .data.templates import Template
    from .errors import PatchwidgetError

    prompts = {}
    try:
        t = Template(template)
        for name, given in (("clean", clean), ("corrupt", corrupt)):
            pairs = [item.split("=", 1) for item in given.split(",")]
            if any(len(pair) != 2 for pair in pairs):
                parser.error(f"--{name} with --template must be slot values like 'IO=Mary,S=John', got {given!r}")
            prompts[name] = t.fill(**{key.strip(): value.strip() for key, value in pairs})
    except PatchwidgetError as err:
        parser.error(str(err).replace("\n", " "))
    return prompts


def _check_page_metric(parser: argparse.ArgumentParser, metric: str) -> None:
    """``--out .html`` draws the widget: its metrics only (the widget's own check), before the model loads."""
    from .errors import SettingsError
    from .ui.explorer import check_metric

    try:
        check_metric(metric)
    except SettingsError as err:
        parser.error(f"--out .html draws the widget: {err}; use --metric logit_diff and --scale")


def _run_texts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The prompts and answers of ``run``, every argument checked first: a mistake costs no model load."""
    from .data.demo_data import IOI_EXAMPLE

    prompts = [args.clean, args.corrupt, args.answer, args.wrong]
    if any(p is not None for p in prompts) and any(p is None for p in prompts):
        parser.error("give all of --clean, --corrupt, --answer and --wrong, or none for the demo example")
    if args.out is not None and args.out.suffix not in OUTPUTS:
        parser.error(f"--out must end in one of {', '.join(OUTPUTS)}, got {str(args.out)!r}")
    if args.out is not None and args.out.suffix == ".html":
        _check_page_metric(parser, args.metric)
    # Everything that can be checked is checked before the model loads and the grid is computed.
    if args.out is not None and args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} is a folder; give a file name such as {str(args.out / 'grid.png')!r}")
    if args.out is not None and not args.out.resolve().parent.is_dir():
        parser.error(f"--out {str(args.out)!r}: the folder {str(args.out.parent)!r} does not exist")
    if args.memory_budget is not None and not (math.isfinite(args.memory_budget) and args.memory_budget > 0):
        parser.error(f"--memory-budget must be a positive number of MB, got {args.memory_budget}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    texts = IOI_EXAMPLE if args.clean is None else dict(zip(("clean", "corrupt", "answer", "wrong"), prompts))
    if args.template is not None:
        if args.clean is None:
            parser.error(
                "--template needs --clean and --corrupt (slot values, e.g. 'IO=Mary,S=John'), --answer, --wrong"
            )
        texts = {**texts, **_fill(parser, args.template, args.clean, args.corrupt)}
    return texts


def _load(parser: argparse.ArgumentParser, args: argparse.Namespace, remote: bool | str) -> Any:
    """The model ``--model`` names, a failed load said in one line (for a server, loaded without weights)."""
    from . import load_model
    from .errors import PatchwidgetError

    on_server = remote is True or (isinstance(remote, str) and remote != "local")
    if on_server and args.model is None:
        parser.error("--remote runs a hub model on a server: give its name with --model")
    try:
        return load_model(args.model, dispatch=False) if on_server else load_model(args.model)  # no weights here
    except PatchwidgetError as err:
        parser.error(str(err).replace("\n", " "))
    except (OSError, ValueError) as err:  # what transformers raises for a name or folder that holds no model
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        parser.error(f"--model {args.model!r} could not be loaded: {first}")


def _patch(
    parser: argparse.ArgumentParser, args: argparse.Namespace, model: Any, settings: dict, by_position: bool | None
) -> PatchResult:
    """The grid, with a progress bar on stderr (stdout may carry the table); a refusal said in one line."""
    from tqdm.auto import tqdm

    from . import patch
    from .errors import PatchwidgetError

    with tqdm(total=0, unit="cell", desc=args.site, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            return patch(model, **settings, layers=args.layers, by_position=by_position, progress=progress)
        except PatchwidgetError as err:
            bar.close()
            parser.error(str(err).replace("\n", " "))


def _write(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    model: Any,
    settings: dict,
    by_position: bool | None,
    result: PatchResult,
) -> None:
    """Show or save the grid as ``--out`` asks: a table on stdout, a result file, a figure, or the widget's page."""
    from .files import write_atomic

    if args.out is not None and args.out.suffix == ".html":
        from .ui.levels import TOP_SITES
        from .ui.widget import PatchWidget

        if args.site not in TOP_SITES or by_position is not None or args.layers is not None:
            parser.error(
                f"--out .html draws the interactive grid, which starts from one of {', '.join(TOP_SITES)} "
                "over all layers; leave out --layers and --by-position"
            )
        widget = PatchWidget(model, **settings, scale=args.scale, preview=False)
        widget.save_html(args.out)
        widget.close()
    elif args.out is not None and args.out.suffix in (".json", ".npz"):
        result.save(args.out)  # the computed values: the scale is how they are shown
    elif args.out is None:
        print(describe(result, model.tokenizer, args.scale))
        print(format_table(_shown(result, args.scale)))
    else:
        figure = _shown(result, args.scale).plot()
        write_atomic(args.out, lambda f: figure.savefig(f, format=args.out.suffix[1:], dpi=150))
    if args.out is not None:
        print(f"wrote {args.out}")


def _shown(result: PatchResult, scale: str) -> PatchResult:
    """The grid as ``--scale`` shows it: normalised per pair (clean 1, corrupted 0), or as computed."""
    return result.normalized() if scale == "normalized" else result


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``patchwidget run``: patch one site over a grid, then show or save it."""
    texts = _run_texts(parser, args)
    remote = {"ndif": True, None: False}.get(args.remote, args.remote)
    model = _load(parser, args, remote)
    # What ``patch`` and the widget (for ``--out .html``) both take.
    settings = dict(
        texts,
        site=args.site,
        metric=args.metric,
        direction=args.direction,
        batch_size=args.batch_size,
        memory_budget=None if args.memory_budget is None else int(args.memory_budget * 2**20),
        remote=remote,
    )
    by_position = None if args.by_position is None else args.by_position == "yes"
    result = _patch(parser, args, model, settings, by_position)
    _write(parser, args, model, settings, by_position, result)
    return 0


def _doctor(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``patchwidget doctor``: every check of ``patchwidget.doctor``, one line each; 1 when one failed."""
    from .health import doctor

    report = doctor(ndif=args.ndif)
    print(report)
    return 0 if report.ok else 1


COMMANDS = {"run": _run, "doctor": _doctor}  # subcommand -> what runs it: (parser, parsed arguments) -> exit status


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with one line saying why)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return COMMANDS[args.command](parser, args)


if __name__ == "__main__":
    raise SystemExit(main())
