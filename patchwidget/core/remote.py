"""Where a trace runs: here, in nnsight's local simulation of a server, or on NDIF.

Every trace patchwidget runs passes ``remote`` through ``trace_kwargs``, which
hands nnsight either ``remote=...`` or, when someone listens for server status
(the widget's progress bar does), a remote backend that reports each status
NDIF sends (RECEIVED, QUEUED, RUNNING, ...) to that listener.

Example:
    >>> from patchwidget import remote
    >>> with remote.reporting(lambda status, text: print(status, text)):   # doctest: +SKIP
    ...     patch(model, ..., remote=True)                                  # prints QUEUED, RUNNING, ...
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import nnsight
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.schema.response import Status

from ..errors import RemoteSettingError

StatusListener = Callable[[str, str], None]  # (status, description), e.g. ("QUEUED", "position 3")

_listener: contextvars.ContextVar[StatusListener | None] = contextvars.ContextVar("patchwidget_status", default=None)


def prepare_remote(model: Any, remote: bool | str) -> None:
    """Check ``remote`` before any compute and ship patchwidget's code with remote traces.

    The server has nnsight but not patchwidget, so patchwidget's modules travel
    with each request (nnsight pickles registered modules by value).
    """
    if not isinstance(remote, bool | str):
        raise RemoteSettingError(f"remote must be False, True, 'local' or a server URL, got {remote!r}")
    if not remote:
        return
    nnsight.register("patchwidget")
    if remote == "local":
        return
    try:  # NDIF knows models by their hub name; resolving it fails for a local folder or an unknown name
        model.to_model_key()
    except Exception as err:
        name = getattr(model, "repo_id", None) or type(model).__name__
        raise RemoteSettingError(
            f"remote={remote!r} runs the model on NDIF, which loads models by their Hugging Face hub name, "
            f"but {name!r} could not be resolved to one ({type(err).__name__}: {err}). Load the model by its hub "
            "name (load_model('openai-community/gpt2', dispatch=False)), or use remote=False or 'local'."
        ) from err


def trace_kwargs(model: Any, remote: bool | str) -> dict[str, Any]:
    """The keyword arguments for ``model.trace`` that run it where ``remote`` says."""
    listener = _listener.get()
    if not remote or remote == "local" or listener is None:
        return {"remote": remote}
    return {"backend": ReportingBackend(model, remote, listener)}


@contextlib.contextmanager
def reporting(listener: StatusListener) -> Iterator[None]:
    """Within this block, remote traces report each server status to ``listener``.

    ``listener(status, description)`` runs on the thread that waits for the
    server; an exception it raises (a cancellation, say) stops the waiting.
    nnsight's own status line is not printed meanwhile: the listener shows it.
    """
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class ReportingBackend(RemoteBackend):
    """nnsight's remote backend, also telling ``listener`` each status the server sends."""

    def __init__(self, model: Any, remote: bool | str, listener: StatusListener) -> None:
        super().__init__(
            model.to_model_key(),
            host=remote if isinstance(remote, str) else None,
            env=model._remoteable_get_env(),  # e.g. a PEFT adapter, as nnsight's own remote path sends it
        )
        self.listener = listener
        self.display.enabled = False  # the listener shows the status instead

    def note(self, response: Any) -> bool:
        if response.status is not Status.LOG:
            self.listener(response.status.value, response.description or "")
        return super().note(response)
