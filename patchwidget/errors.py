"""Every error patchwidget raises on purpose, in one place.

Each is a ``PatchwidgetError``, itself a ``ValueError``: bad input, found
before any forward pass runs, with a message that names the input.

Example:
    >>> import patchwidget as pw
    >>> try:
    ...     pw.patch(pw.load_model(), "a", "b", answer="Mary", wrong="John", site="nope")
    ... except pw.PatchwidgetError as err:
    ...     print(type(err).__name__)
    UnknownSiteError
"""

from __future__ import annotations


class PatchwidgetError(ValueError):
    """Bad input to patchwidget; raised before any forward pass runs."""


class UnknownSiteError(PatchwidgetError):
    """A site name that is not in ``patchwidget.SITES``, or that this model lacks."""


class UnsupportedModelError(PatchwidgetError):
    """A model whose architecture or modules patchwidget does not know."""


class ModelLoadError(PatchwidgetError):
    """``load_model`` was given something it cannot load."""


class SettingsError(PatchwidgetError):
    """A setting (direction, method, layers, heads, batch size, ...) is not valid."""


class UnknownMetricError(PatchwidgetError):
    """A metric that is neither one of ``METRICS`` nor a callable."""


class MetricError(PatchwidgetError):
    """A custom metric returned something other than one finite-or-not float per batch row, or raised."""


class PromptError(PatchwidgetError):
    """A prompt, answer or their combination cannot be patched."""


class MemoryBudgetError(PatchwidgetError):
    """The memory budget is too small for even one patched copy."""


class RemoteSettingError(PatchwidgetError):
    """``remote=`` is not a value nnsight understands, or the model cannot run remotely."""


class RemoteVersionError(RemoteSettingError):
    """The server runs, or accepts, another nnsight version than the one installed here."""


class ResultFileError(PatchwidgetError):
    """A saved result or circuit could not be read (wrong format, truncated, altered) or written."""


class MessageError(PatchwidgetError):
    """A message from the front end that the widget cannot act on."""


class NonFiniteWarning(UserWarning):
    """The metric gave NaN or an infinity for some cells; they are drawn as "no value"."""
