"""Where a trace runs: here, in nnsight's local simulation of a server, or on NDIF.

Every trace patchwidget runs passes ``remote`` through ``trace_kwargs``, which
hands nnsight either ``remote=...`` (here, or its local simulation) or, for a
server, patchwidget's remote backend: it reports each status NDIF sends
(RECEIVED, QUEUED, RUNNING, ...) to a listener when someone listens (the
widget's progress bar does), and turns a server's refusal of this client's
nnsight version into a ``RemoteVersionError``.

A trace ships as pickled nnsight objects, so client and server must run the same
nnsight: on different ones a request can fail with an error that names no version
(nnsight issue 570: a 0.5.13 client against a 0.5.11 server). nnsight has no
version handshake. What it has, and what is used here:

- ``GET /env`` (what ``nnsight.compare()`` reads): the server's packages, nnsight
  among them. ``prepare_remote`` asks it before anything is sent and refuses a
  different version.
- the ``nnsight-version`` header on ``POST /request``: NDIF, when configured with
  a minimum client version, answers an older client with HTTP 400 and a sentence
  naming both versions, which nnsight raises as ``RemoteError``. That reply is
  parsed into a ``RemoteVersionError`` keeping the server's text.

Where neither says anything (no ``/env``, no minimum set), nothing is checked.

Example:
    >>> from patchwidget.core import remote
    >>> with remote.reporting(lambda status, text: print(status, text)):   # doctest: +SKIP
    ...     patch(model, ..., remote=True)                                  # prints QUEUED, RUNNING, ...
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

import nnsight
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.schema.config import CONFIG
from nnsight.schema.response import Status

from ..errors import RemoteSettingError, RemoteVersionError

StatusListener = Callable[[str, str], None]  # (status, description), e.g. ("QUEUED", "position 3")

# The nnsight versions patchwidget supports: pyproject.toml's dependency (tests/test_remote.py checks they agree).
NNSIGHT_PIN = ">=0.8.1,<0.9"

# NDIF's refusal of an nnsight older than its configured minimum (its HTTP 400 detail, as nnsight raises it).
_BELOW_MINIMUM = re.compile(
    r"Client nnsight version (?P<client>\S+) is below the minimum supported (?P<minimum>\S+?)\.?(?:\s|$)"
)

_listener: contextvars.ContextVar[StatusListener | None] = contextvars.ContextVar("patchwidget_status", default=None)


def prepare_remote(model: Any, remote: bool | str) -> None:
    """Check ``remote`` before any compute and ship patchwidget's code with remote traces.

    The server has nnsight but not patchwidget, so patchwidget's modules travel
    with each request (nnsight pickles registered modules by value). For a server,
    its nnsight version is checked here too (``check_server_version``).

    Example:
        >>> prepare_remote(model, "https://api.ndif.us")   # doctest: +SKIP
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
    check_server_version(remote)


def check_server_version(remote: bool | str) -> None:
    """Refuse a server whose nnsight differs from this client's, before any trace is sent.

    The server's version is read from its ``/env`` (``server_nnsight``). Where it
    cannot be read, or this nnsight is not installed as a package (no version to
    compare), nothing is checked and the server's own answer decides.

    Example:
        >>> check_server_version("http://127.0.0.1:8000")   # doctest: +SKIP
        RemoteVersionError: The server at http://127.0.0.1:8000 runs nnsight 0.8.2 and this client has nnsight
        0.8.1; ... pip install "nnsight==0.8.2"
    """
    host = remote if isinstance(remote, str) else CONFIG.API.HOST  # as nnsight's RemoteBackend picks it
    client, server = client_nnsight(), server_nnsight(host)
    if not client or server is None or _same(client, server):
        return
    raise RemoteVersionError(
        f"The server at {host} runs nnsight {server} and this client has nnsight {client}; a remote trace needs "
        "the same nnsight on both sides (on different ones it can fail with an error that names no version). "
        + _advice(f"=={server}", server, client)
    )


def client_nnsight() -> str:
    """This client's nnsight version, as nnsight reports it in its ``nnsight-version`` header ("" if unknown).

    Example:
        >>> client_nnsight()   # doctest: +SKIP
        '0.8.1'
    """
    try:
        return metadata.version("nnsight")
    except metadata.PackageNotFoundError:  # run from a source tree: nnsight sends "" too
        return ""


def server_nnsight(host: str) -> str | None:
    """``_ask_server_nnsight``, asked once per host in a process: NDIF's ``/env`` can take a minute when its
    own cache is cold, and the widget prepares every click's request (a server changes its nnsight by a
    redeploy, which a new kernel sees)."""
    if host not in _SERVER_NNSIGHT:
        _SERVER_NNSIGHT[host] = _ask_server_nnsight(host)
    return _SERVER_NNSIGHT[host]


_SERVER_NNSIGHT: dict[str, str | None] = {}  # host -> the nnsight its /env named (None: it named none)


def _ask_server_nnsight(host: str) -> str | None:
    """The nnsight version the server at ``host`` says it runs, or None where it does not say.

    Reads ``GET {host}/env``, the endpoint ``nnsight.compare()`` reads (``nnsight.ndif.get_remote_env``):
    ``{"python_version": ..., "packages": {"nnsight": "0.8.1", ...}}``. No such endpoint, no answer, or no
    nnsight in it gives None.

    Example:
        >>> server_nnsight("https://api.ndif.us")   # doctest: +SKIP
        '0.8.1'
    """
    import httpx  # nnsight's own HTTP client; imported here, as nnsight does, only for remote work

    try:
        reply = httpx.get(f"{host}/env", timeout=httpx.Timeout(5.0, read=60.0))  # nnsight's timeouts for /env
        reply.raise_for_status()
        packages = reply.json().get("packages")
    except (httpx.HTTPError, ValueError, AttributeError):  # unreachable, an error status, not a JSON object
        return None
    version = packages.get("nnsight") if isinstance(packages, dict) else None
    return version if isinstance(version, str) and version else None


def version_refusal(host: str, text: str) -> RemoteVersionError | None:
    """The clear error for a server's refusal of this client's nnsight version, or None if ``text`` is another error.

    ``text`` is what nnsight raised; the server's words are kept in the message.

    Example:
        >>> err = version_refusal("https://ndif.example", "Failed to send request: Client nnsight version 0.8.1 "
        ...                       "is below the minimum supported 0.8.3. Please `pip install --upgrade nnsight`.")
        >>> "0.8.1" in str(err) and 'pip install "nnsight>=0.8.3,<0.9"' in str(err)
        True
    """
    found = _BELOW_MINIMUM.search(text)
    if found is None:
        return None
    client, minimum = found["client"], found["minimum"]
    return RemoteVersionError(
        f"The server at {host} accepts nnsight {minimum} or newer and this client has nnsight {client}. "
        + _advice(f">={minimum}", minimum, client)
        + f" The server said: {text}"
    )


def _advice(spec: str, wanted: str, client: str) -> str:
    """What to install to get nnsight ``spec`` (``==0.8.2``, ``>=0.8.3``), or why patchwidget cannot."""
    from packaging.specifiers import SpecifierSet  # packaging comes with transformers
    from packaging.version import InvalidVersion, Version

    pin = SpecifierSet(NNSIGHT_PIN)
    try:
        inside = pin.contains(Version(wanted), prereleases=True)  # a release candidate the server runs counts
    except InvalidVersion:
        inside = False
    if inside:
        upper = "".join(f",{s}" for s in pin if s.operator == "<" and spec.startswith(">"))
        return f'Install that version here: pip install "nnsight{spec}{upper}".'
    return (
        f"patchwidget supports nnsight{NNSIGHT_PIN}, which does not include {wanted}, so it cannot run on this "
        f"server yet: use remote=False or 'local', or a server that runs nnsight {client}."
    )


def _same(a: str, b: str) -> bool:
    """Whether two version strings name one version (``0.8.1`` and ``0.8.1.0`` do)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def trace_kwargs(model: Any, remote: bool | str) -> dict[str, Any]:
    """The keyword arguments for ``model.trace`` that run it where ``remote`` says.

    Example:
        >>> trace_kwargs(model, "local")
        {'remote': 'local'}
    """
    if not remote or remote == "local":
        return {"remote": remote}
    return {"backend": ServerBackend(model, remote, _listener.get())}


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


class ServerBackend(RemoteBackend):
    """nnsight's remote backend as ``remote=True`` builds it, plus a status listener and the version refusal.

    Example:
        >>> with model.trace("Hi", backend=ServerBackend(model, True, None)):   # doctest: +SKIP
        ...     out = model.lm_head.output.save()
    """

    def __init__(self, model: Any, remote: bool | str, listener: StatusListener | None) -> None:
        super().__init__(
            model.to_model_key(),
            host=remote if isinstance(remote, str) else None,
            env=model._remoteable_get_env(),  # e.g. a PEFT adapter, as nnsight's own remote path sends it
        )
        self.listener = listener
        if listener is not None:
            self.display.enabled = False  # the listener shows the status instead

    def _post(self, request: Any, blob: bytes) -> Any:
        # The POST's answer is the server's first reply, and where NDIF refuses a client's nnsight version.
        try:
            return super()._post(request, blob)
        except RemoteError as err:
            refusal = version_refusal(self.host, str(err))
            if refusal is None:
                raise
            raise refusal from err

    def note(self, response: Any) -> bool:
        if self.listener is not None and response.status is not Status.LOG:
            self.listener(response.status.value, response.description or "")
        return super().note(response)
