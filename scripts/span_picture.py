"""Draw the README's picture of a grid by span (``docs/spans.png``) on the bundled model.

python scripts/span_picture.py
"""

from __future__ import annotations

from pathlib import Path

import patchwidget as pw

OUT = Path(__file__).resolve().parent.parent / "docs" / "spans.png"


def main() -> None:
    model = pw.load_model()
    # The bundled data's three IOI sentence shapes as one template: the shapes differ in slots of 1 to 3 words.
    t = pw.Template("{START} {IO} and {S1} {EVENT} the {PLACE} {COMMA} {S2} {VERB} a {OBJ} to")
    shapes = [("When", "went to", ","), ("After", "arrived at", ","), ("Then", "had fun at", ", and")]
    names = [("Mary", "John", "store", "gave", "drink"), ("Tom", "Lisa", "park", "handed", "book")]
    clean, corrupt, answers, wrongs = [], [], [], []
    for start, event, comma in shapes:
        for io, s, place, verb, obj in names:
            fill = dict(START=start, IO=io, S1=s, EVENT=event, PLACE=place, COMMA=comma, VERB=verb, OBJ=obj)
            clean.append(t.fill(S2=s, **fill))
            corrupt.append(t.fill(S2=io, **fill))  # the IOI corruption: the second name is the other one
            answers.append(io)
            wrongs.append(s)
    r = pw.patch(model, clean, corrupt, answer=answers, wrong=wrongs, metric="logit_diff_norm")
    print(r.dims, r.coords["span"])
    fig = r.plot()
    fig.suptitle("resid_pre by span: 6 IOI pairs of three sentence shapes (14 to 16 tokens), one grid")
    fig.savefig(OUT, dpi=120, bbox_inches="tight")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
