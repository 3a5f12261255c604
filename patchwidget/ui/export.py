"""The offline page: a drill-down saved as one HTML file that works without a kernel.

The page inlines the front end and every level computed so far; clicking
through it replays them. The data is embedded so that no text in it (a token
such as ``<!--<script>``, or one equal to a placeholder of the template) can
change the page's structure: the JSON escapes ``<``, ``>`` and ``&``, the
template is filled in one pass, and non-finite numbers are refused.

Example:
    >>> page = standalone_html({"start": 0, "states": [], "edges": {}}, title="IOI")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ResultFileError

STATIC = Path(__file__).resolve().parent.parent / "static"
TEMPLATE = Path(__file__).resolve().parent / "standalone.html"
_PLACEHOLDER = re.compile(r"__(TITLE|CSS|DATA|BUNDLE)__")


def script_json(data: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&``, no NaN or Infinity."""
    try:
        text = json.dumps(data, allow_nan=False)
    except ValueError as err:
        raise ResultFileError(f"cannot save the page: it holds a number JSON cannot carry ({err})") from err
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def standalone_html(data: dict, title: str) -> str:
    """The whole page for ``data`` (``start``, ``states``, ``edges``, ``controls``, ``vmax``)."""
    parts = {
        "TITLE": html.escape(title),
        # Our own bundle and style sheet: only the sequence that would end their element is escaped.
        "CSS": (STATIC / "widget.css").read_text(encoding="utf-8").replace("</", "<\\/"),
        "BUNDLE": (STATIC / "widget.js").read_text(encoding="utf-8").replace("</", "<\\/"),
        "DATA": script_json(data),
    }
    # One pass: text put in by one placeholder is never searched for another.
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], TEMPLATE.read_text(encoding="utf-8"))
