"""The patchwidget quickstart as a marimo notebook.

Run it with ``marimo edit examples/quickstart_marimo.py`` (interactive),
``marimo run examples/quickstart_marimo.py`` (as an app) or
``python examples/quickstart_marimo.py`` (headless, as a script).
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium")


@app.cell
def _():
    import marimo as mo

    import patchwidget as pw

    return mo, pw


@app.cell
def _(mo):
    mo.md("""
    # patchwidget quickstart: which part of the model makes it answer “Mary”?

    Load the small GPT-2 bundled with patchwidget (4 layers × 4 heads, works offline).
    """)
    return


@app.cell
def _(pw):
    model = pw.load_model()
    return (model,)


@app.cell
def _(mo):
    mo.md("""
    A prompt pair that differs in one token: the clean prompt predicts “Mary”, the corrupted one “John”.
    """)
    return


@app.cell
def _():
    clean = "When Mary and John went to the store , John gave a drink to"
    corrupt = "When Mary and John went to the store , Mary gave a drink to"
    return clean, corrupt


@app.cell
def _(mo):
    mo.md("""
    Copy each clean residual-stream activation into the corrupted run and plot how much
    of the clean answer comes back (1 = all of it).
    """)
    return


@app.cell
def _(clean, corrupt, model, pw):
    result = pw.patch(model, clean, corrupt, answer="Mary", wrong="John", site="resid_pre", metric="logit_diff_norm")
    result.plot()
    return


@app.cell
def _(mo):
    mo.md("""
    Explore the same grid interactively: click a cell to open that layer's heads,
    click a head for its query, key, value and attention pattern.
    """)
    return


@app.cell
def _(clean, corrupt, mo, model, pw):
    explorer = mo.ui.anywidget(pw.explore(model, clean, corrupt, answer="Mary", wrong="John"))
    explorer  # noqa: B018 (marimo shows a cell's last expression)
    return


if __name__ == "__main__":
    app.run()
