"""Draw the README's picture of an edge circuit (``docs/ioi_edge_circuit.png``) on the bundled model.

python scripts/edge_circuit_picture.py
"""

from __future__ import annotations

from pathlib import Path

import patchwidget as pw

OUT = Path(__file__).resolve().parent.parent / "docs" / "ioi_edge_circuit.png"


def main() -> None:
    model = pw.load_model()
    train = pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8, seed=1))
    circuit = pw.find_circuit(model, **train, level="edges", target=0.9)
    held_out = circuit.faithfulness_on(model, **pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8, seed=2)))
    print(circuit, f"held out: {held_out:.3f}", f"{len(circuit.edges)} of {len(pw.edge_graph(model))} edges")
    fig = circuit.plot(show=False)
    fig.savefig(OUT, dpi=120, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
