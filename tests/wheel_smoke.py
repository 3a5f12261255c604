"""What a user who ran ``pip install patchwidget`` does first, run by ``tests/test_wheel.py`` with the python of
a fresh virtual environment that holds only the built wheel and its dependencies, from a folder outside the
source tree. Prints one JSON object on stdout for the test to check; any exception fails the run.

Usage:
    <venv>/bin/python wheel_smoke.py
"""

from __future__ import annotations

import json
import sys

import patchwidget as pw
from patchwidget.data.demo_data import IOI_EXAMPLE
from patchwidget.ui.export import STATIC
from patchwidget.ui.protocol import fingerprint

GRID = {"site": "resid_pre", "layers": [0, 2]}  # a small grid: 2 layers by 14 tokens of the bundled IOI pair


def main() -> None:
    """Load the bundled model, patch a small grid, build the widget; print what was found."""
    model = pw.load_model()
    result = pw.patch(model, **IOI_EXAMPLE, **GRID)
    widget = pw.PatchWidget(model, **IOI_EXAMPLE, site="resid_pre")
    bundle = str(widget._esm)  # what the widget sends the page: the bundle's text, read from its file
    report = {
        "file": pw.__file__,
        "prefix": sys.prefix,
        "version": pw.__version__,
        "values": result.values.tolist(),
        "clean": result.clean_baseline.tolist(),
        "corrupt": result.corrupt_baseline.tolist(),
        "static": str(STATIC),
        "bundle_bytes": len(bundle),
        "bundle_is_file": (STATIC / "widget.js").read_text(encoding="utf-8") == bundle,
        "css_bytes": len(str(widget._css)),
        "fingerprint": fingerprint(),
        "fingerprint_in_bundle": fingerprint() in bundle,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
