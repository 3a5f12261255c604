"""find_circuit (node circuits, MIB's faithfulness) against evaluating every prefix with plain hooks.

On the bundled model's 8 IOI pairs, in one process: ``find_circuit`` with both ranking methods
(each after a warm-up call, best of ``--repeats``), then the plain twin of the definition
(``tests/reference.reference_faithfulness``: PyTorch hooks, one forward pass per pair and set,
no batching; it runs m(C), m(empty) and m(N) for every prefix) on every prefix of the found
ranking, once; the two must agree on every prefix. ``--plot DIR`` saves the circuit diagram and
its curve (the README's ``docs/ioi_circuit.png`` and ``docs/ioi_circuit_curve.png``).

    python benchmarks/bench_find_circuit.py [--repeats 3] [--plot docs]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import patchwidget as pw
from patchwidget import demo_data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_find_bottleneck import best  # the script's folder is on the path

from tests.reference import reference_faithfulness  # the plain twin, not the engine

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", help="save ioi_circuit.png and ioi_circuit_curve.png into this folder")
    args = parser.parse_args()
    model = pw.load_model()
    pairs = demo_data.ioi_pairs(8)
    kw = demo_data.as_prompts(pairs)
    print(f"bundled model, 8 IOI pairs, target {args.target}; {platform.machine()}, torch {torch.__version__}\n")
    print("| method | time (s) | nodes found | of | faithfulness | CPR | CMD |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    found = {}
    for method in ("attribution", "exact"):
        seconds, c = best(lambda m=method: pw.find_circuit(model, **kw, target=args.target, method=m), args.repeats)
        found[method] = (seconds, c)
        print(
            f"| find_circuit, method={method} | {seconds:.2f} | {len(c.cells)} | {len(c.curve['ranked'])} | "
            f"{c.faithfulness:.3f} | {c.curve['cpr']:.3f} | {c.curve['cmd']:.3f} |"
        )
    seconds, c = found["attribution"]
    tok = model.tokenizer
    plain_pairs = [
        (
            torch.tensor(tok(p.clean)["input_ids"]),
            torch.tensor(tok(p.corrupt)["input_ids"]),
            *tok(p.answer)["input_ids"][:1],
            *tok(p.wrong)["input_ids"][:1],
        )
        for p in pairs
    ]
    ranked = c.curve["ranked"]
    start = time.perf_counter()
    plain = []
    for k in range(1, len(ranked) + 1):
        kept = {("embed", 0, 0) if n.site == "embed" else (n.site, n.layer, n.head or 0): None for n in ranked[:k]}
        plain.append(reference_faithfulness(model._module, plain_pairs, kept))
    plain_seconds = time.perf_counter() - start
    engine = [pw.faithfulness(model, **kw, circuit=ranked[:k]) for k in range(1, len(ranked) + 1)]
    assert np.allclose(engine, plain, rtol=0, atol=1e-4 * max(1, np.abs(plain).max())), (engine, plain)
    print(
        f"| plain hooks, every prefix of the ranking (1 to {len(ranked)} nodes) | {plain_seconds:.2f} | | | | | |\n\n"
        f"find_circuit (attribution) is {plain_seconds / seconds:.0f}x faster than the plain prefix loop; "
        f"the two agree on every prefix to 1e-4."
    )
    if args.plot:
        c.plot(show=False).savefig(Path(args.plot) / "ioi_circuit.png", dpi=120, bbox_inches="tight")
        c.plot_curve(show=False).savefig(Path(args.plot) / "ioi_circuit_curve.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
