"""A stand-in for NDIF on localhost, so tests can drive nnsight's real remote client.

It speaks the protocol ``nnsight.intervention.backends.remote.RemoteBackend``
uses: a ``/subscribe`` websocket that hands out a session id and then streams
status updates, and ``POST /request`` that takes the serialised trace. Each job
is deserialised and run on the one model the server was given (the test's own
model object), reporting RECEIVED, QUEUED, RUNNING and COMPLETED like the real
service. It counts requests, which is what the tests want to know.

Versions, as NDIF answers them: ``GET /env`` lists the server's packages
(``{"python_version", "packages": {"nnsight": ...}}``, what ``nnsight.compare()``
reads), nnsight among them at ``server_version`` (by default the client's own;
None: no ``/env``, as on a server without it). With ``min_client_version`` set,
``POST /request`` refuses a client whose ``nnsight-version`` header is missing,
malformed or older with HTTP 400 and FastAPI's ``{"detail": ...}`` body, in NDIF's
words (``NDIF_MIN_NNSIGHT_VERSION``, ndif's ``services/api/versioning.py``), before
the job is queued.
"""

from __future__ import annotations

import asyncio
import io
import json
import linecache
import sys
import threading
import uuid
from importlib import metadata
from typing import Any

import torch
import zstandard
from nnsight.schema.request import RequestModel
from nnsight.schema.response import ResponseModel, Status
from nnsight.tracing import tracer as nnsight_tracer
from packaging.version import InvalidVersion, Version
from tornado import httpserver, netutil, web, websocket


class FakeNDIF:
    """``with FakeNDIF(model) as server: model.trace(..., remote=server.url)``."""

    def __init__(
        self,
        model: Any,
        fail_with: str | None = None,
        queue_seconds: float = 0.0,
        server_version: str | None = metadata.version("nnsight"),
        min_client_version: str | None = None,
    ) -> None:
        self.model = model
        self.fail_with = fail_with  # report ERROR with this description instead of running
        self.queue_seconds = queue_seconds  # how long each job waits in the queue, to watch it there
        self.server_version = server_version  # the nnsight /env reports; None: no /env endpoint
        self.min_client_version = min_client_version  # refuse older clients, as NDIF_MIN_NNSIGHT_VERSION does
        self.requests = 0  # jobs accepted
        self.refused = 0  # requests refused for their nnsight version
        self.env_queries = 0
        self.statuses: list[str] = []
        self._sockets: dict[str, websocket.WebSocketHandler] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeNDIF:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        server_ = self
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        class Subscribe(websocket.WebSocketHandler):
            def open(self) -> None:
                session = uuid.uuid4().hex
                server_._sockets[session] = self
                self.write_message(json.dumps({"session_id": session}))

        class Env(web.RequestHandler):
            def get(self) -> None:
                if server_.server_version is None:
                    raise web.HTTPError(404)
                server_.env_queries += 1
                self.write({"python_version": sys.version, "packages": {"nnsight": server_.server_version}})

        class Request(web.RequestHandler):
            async def post(self) -> None:
                envelope = RequestModel.model_validate_json(self.get_body_argument("data"))
                refusal = server_.refusal(self.request.headers.get("nnsight-version"))
                if refusal is not None:
                    server_.refused += 1
                    self.set_status(400)
                    self.write({"detail": refusal})
                    return
                blob = self.request.files["blob"][0]["body"]
                job = uuid.uuid4().hex
                server_.requests += 1
                self.write(ResponseModel(id=job, status=Status.RECEIVED).model_dump_json())
                await self.finish()
                socket = server_._sockets[envelope.session_id]
                await server_._send(socket, ResponseModel(id=job, status=Status.QUEUED, description="position 1"))
                await asyncio.sleep(server_.queue_seconds)
                await server_._send(socket, ResponseModel(id=job, status=Status.RUNNING))
                if server_.fail_with:
                    await server_._send(
                        socket, ResponseModel(id=job, status=Status.ERROR, description=server_.fail_with)
                    )
                    return
                result = await asyncio.to_thread(server_._execute, blob, envelope.compress)
                done = ResponseModel(id=job, status=Status.COMPLETED, data=result)
                server_.statuses.append("COMPLETED")
                await socket.write_message(done.pickle(), binary=True)

        sockets, port = netutil.bind_sockets(0, "127.0.0.1")[0], None
        port = sockets.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        http = httpserver.HTTPServer(
            web.Application([(r"/subscribe", Subscribe), (r"/request", Request), (r"/env", Env)])
        )
        http.add_sockets([sockets])
        self._ready.set()
        await self._stop.wait()
        http.stop()

    def refusal(self, client: str | None) -> str | None:
        """NDIF's 400 detail for a client nnsight it does not accept, or None to accept it."""
        if self.min_client_version is None:
            return None
        if not client:
            return (
                "Client nnsight version was not provided. This usually means an outdated nnsight; "
                "please `pip install --upgrade nnsight` and retry."
            )
        try:
            older = Version(client) < Version(self.min_client_version)
        except InvalidVersion:
            return f"Malformed nnsight version '{client}'."
        if not older:
            return None
        return (
            f"Client nnsight version {client} is below the minimum supported {self.min_client_version}. "
            "Please `pip install --upgrade nnsight`."
        )

    async def _send(self, socket: websocket.WebSocketHandler, response: ResponseModel) -> None:
        self.statuses.append(response.status.value)
        await socket.write_message(response.model_dump_json())

    def _execute(self, blob: bytes, compress: bool) -> bytes:
        """Run one serialised trace and return the saved values as the server would."""
        persistent = self.model._remoteable_persistent_objects()
        cached = dict(linecache.cache)  # deserialising registers the block's source under the client's file
        try:
            tracer = RequestModel.deserialize(blob, persistent, compress=compress)
            nnsight_tracer.inc()
            try:
                tracer.execute(tracer.info.code)
                saved = nnsight_tracer._saves()
                result = {k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in saved}
            finally:
                nnsight_tracer.dec()
        finally:
            linecache.cache.clear()
            linecache.cache.update(cached)
        buffer = io.BytesIO()
        torch.save(result, buffer)
        data = buffer.getvalue()
        return zstandard.ZstdCompressor().compress(data) if compress else data
