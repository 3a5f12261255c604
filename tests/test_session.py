"""The session without a widget: one worker, requests superseded and cancelled at batch boundaries."""

from __future__ import annotations

import threading

from patchwidget.ui.session import Level, Session, Settings

from .test_widget import TEXTS


def test_newer_request_supersedes_older(demo):
    started, release, second = threading.Event(), threading.Event(), threading.Event()
    shown = []

    def on_result(request_id, computed):
        shown.append((request_id, computed.level))
        second.set()

    session = Session(demo, **TEXTS, batch_size=8, preview=False, on_result=on_result)

    def slow_progress(request_id, done, total):
        if request_id == 1:
            started.set()
            release.wait(10)

    session.on_progress = slow_progress
    settings = Settings()
    session.submit(1, Level("neurons", layer=0, pos=9), settings)
    assert started.wait(10)
    session.submit(2, Level("heads", layer=1), settings)  # supersedes 1 while it runs
    release.set()
    assert second.wait(30), "request 2 never finished"
    # One worker takes requests in order: once 2 is shown, 1 has ended, and it showed nothing.
    assert shown == [(2, Level("heads", layer=1))]
    assert (Level("neurons", layer=0, pos=9), settings) not in session.cache  # cancelled, never finished
    session.close()
    assert not session._worker.is_alive()


def test_cancel_stops_at_the_next_batch(demo):
    progress = {1: [], 2: []}
    results = []
    two_batches, finished = threading.Event(), threading.Event()

    def on_result(request_id, computed):
        results.append(request_id)
        finished.set()

    session = Session(demo, **TEXTS, batch_size=16, preview=False, on_result=on_result)

    def on_progress(request_id, done, total):
        progress[request_id].append(done)
        if request_id == 1 and len(progress[1]) == 2:
            session.cancel()
            two_batches.set()

    session.on_progress = on_progress
    session.submit(1, Level("neurons", layer=0, pos=9), Settings())
    assert two_batches.wait(30), "request 1 never ran two batches"
    session.submit(2, Level("heads", layer=1), Settings())
    assert finished.wait(30), "request 2 never finished"
    # The worker is sequential: request 1 has ended, without a third batch or a result.
    assert len(progress[1]) == 2 and results == [2]  # 2 of 64 batches ran, then it stopped
    session.close()
