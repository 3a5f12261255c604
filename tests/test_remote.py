"""Every patching path under nnsight's remote="local" simulation of remote
execution gives the numbers of a plain local run."""

from __future__ import annotations

import importlib.metadata

import pytest

import patchwidget as pw
from patchwidget import demo_data

from .close import assert_close, near

PAIRS = demo_data.ioi_pairs(2, seed=6)
TEXTS = dict(
    clean=[p.clean for p in PAIRS],
    corrupt=[p.corrupt for p in PAIRS],
    answer=[p.answer for p in PAIRS],
    wrong=[p.wrong for p in PAIRS],
)


def both(fn, **kwargs):
    local, remote = fn(remote=False, **kwargs), fn(remote="local", **kwargs)
    return local, remote


@pytest.mark.parametrize("site", list(pw.SITES))
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_every_site_and_method_under_remote_local(demo, site, method):
    kwargs = {"neurons": [1, 2, 3]} if site == "mlp_neuron" else {}
    for direction in ("denoise", "noise"):
        local, remote = both(
            lambda d=direction, **kw: pw.patch(
                demo, **TEXTS, site=site, method=method, direction=d, layers=[1, 3], **kwargs, **kw
            )
        )
        assert_close(remote.per_pair, local.per_pair, 1e-5)
        assert_close(remote.clean_baseline, local.clean_baseline, 1e-5)


def test_noise_joint_and_pattern_under_remote_local(demo):
    noise = pw.noise("France", samples=2)
    local, remote = both(
        lambda **kw: pw.patch(demo, "The capital of France is", noise, answer="Paris", wrong="Tokyo", **kw)
    )
    assert_close(remote.values, local.values, 1e-5)
    cells = [pw.Cell("head_out", 0, head=3), pw.Cell("attn_pattern", 1, head=0), pw.Cell("mlp_out", 2, pos=-1)]
    local, remote = both(lambda **kw: pw.patch_sites(demo, **TEXTS, cells=cells, **kw))
    assert_close(remote.per_pair_singles, local.per_pair_singles, 1e-5)
    assert remote.joint == near(local.joint, 1e-5)
    from patchwidget.core.engine import attention_pattern

    local, remote = both(lambda **kw: attention_pattern(demo, PAIRS[0].clean, 1, 2, **kw))
    assert_close(remote, local, 1e-6)


def test_widget_session_under_remote_local(demo):
    w = pw.explore(demo, **TEXTS, remote="local", preview=False)
    local = pw.patch(demo, **TEXTS, metric="logit_diff_norm")
    assert_close(w.result.values, local.values, 1e-5)
    w.close()


# --- nnsight's real remote client against a stand-in NDIF server on localhost ---------------------------


@pytest.fixture(scope="module")
def client():
    """The demo model as a remote user has it: config and tokenizer, no weights (dispatch=False).
    NDIF knows models by hub name; the demo model is a local folder, so its name is set here the
    way nnsight caches a resolved one."""
    from nnsight.modeling import huggingface

    model = pw.load_model(dispatch=False)
    assert next(model._module.parameters()).device.type == "meta"
    huggingface._ID_CACHE[model.repo_id] = "patchwidget/demo-model"
    yield model
    del huggingface._ID_CACHE[model.repo_id]


@pytest.fixture
def ndif(demo):
    """A FakeNDIF serving the demo model with its weights."""
    from tests.fake_ndif import FakeNDIF

    with FakeNDIF(demo) as server:
        yield server


@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_remote_server_gives_local_numbers_in_a_few_requests(demo, client, ndif, method):
    local = pw.patch(demo, **TEXTS, method=method)
    remote = pw.patch(client, **TEXTS, method=method, remote=ndif.url)
    assert_close(remote.per_pair, local.per_pair, 1e-5)
    assert_close(remote.corrupt_baseline, local.corrupt_baseline, 1e-5)
    cells = local.per_pair.size  # 2 pairs x 4 layers x every token
    assert cells > 100
    if method == "exact":  # one request caches both runs, then batches of 64 patched copies (no-op cells skipped)
        assert 2 <= ndif.requests <= 1 + -(-cells // 64)
    else:  # one forward for the source run, one forward and backward for the target run
        assert ndif.requests == 2
    assert ndif.statuses.count("COMPLETED") == ndif.requests


@pytest.mark.parametrize("site", [s for s in pw.SITES if s != "resid_pre"])
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_every_site_through_a_remote_server(demo, client, ndif, site, method):
    kwargs = {"neurons": [1, 2, 3]} if site == "mlp_neuron" else {}
    for direction in ("denoise", "noise"):
        local = pw.patch(demo, **TEXTS, site=site, direction=direction, method=method, layers=[1, 3], **kwargs)
        remote = pw.patch(
            client, **TEXTS, site=site, direction=direction, method=method, layers=[1, 3], remote=ndif.url, **kwargs
        )
        assert_close(remote.per_pair, local.per_pair, 1e-5)


def test_joint_patching_and_pattern_through_a_remote_server(demo, client, ndif):
    from patchwidget.core.engine import attention_pattern

    cells = [pw.Cell("head_out", 0, head=3), pw.Cell("mlp_out", 2, pos=-1)]
    local = pw.patch_sites(demo, **TEXTS, cells=cells)
    remote = pw.patch_sites(client, **TEXTS, cells=cells, remote=ndif.url)
    assert remote.joint == near(local.joint, 1e-5)
    assert_close(remote.per_pair_singles, local.per_pair_singles, 1e-5)
    assert_close(
        attention_pattern(client, PAIRS[0].clean, 1, 2, remote=ndif.url),
        attention_pattern(demo, PAIRS[0].clean, 1, 2),
        1e-6,
    )
    assert ndif.requests == 2 + 1


def test_noise_corruption_through_a_remote_server(demo, client, ndif):
    noise = pw.noise("France", samples=3)
    local = pw.patch(demo, "The capital of France is", noise, answer="Paris", wrong="Tokyo", site="mlp_out")
    remote = pw.patch(
        client, "The capital of France is", noise, answer="Paris", wrong="Tokyo", site="mlp_out", remote=ndif.url
    )
    assert_close(remote.per_pair, local.per_pair, 1e-5)
    assert ndif.requests == 3  # the embeddings' scale (the weights are on the server), the runs, the patched copies


def wait_for(predicate, timeout=60.0):
    import time

    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_widget_progress_shows_the_servers_queue_and_run_status(demo, client, ndif):
    w = pw.explore(client, **TEXTS, remote=ndif.url, preview=False)
    seen = []
    w.observe(lambda change: seen.append(change["new"].get("server")), names="status")
    w._on_msg(w, {"type": "drill", "request_id": 1, "panel": "resid_pre", "row": 2, "col": 5}, [])
    wait_for(lambda: w.status.get("state") == "idle" and len(w.path) == 2)
    statuses = [s["status"] for s in seen if s]
    assert "QUEUED" in statuses and "RUNNING" in statuses
    assert {"status": "QUEUED", "description": "position 1"} in seen
    assert "server" not in w.status  # done: the line goes with the progress bar
    local = pw.patch(demo, **TEXTS, site="head_out", layers=[2], metric="logit_diff_norm")
    assert_close(w.result.values, local.values, 1e-5)
    w.close()


def test_cancel_stops_waiting_for_the_server(demo, client, ndif):
    from patchwidget.ui.session import Level, Session, Settings

    results, statuses = [], []

    def on_status(request_id, status, description):
        statuses.append((request_id, status))
        if request_id == 1 and status == "QUEUED":
            session.cancel()

    session = Session(
        client,
        **TEXTS,
        remote=ndif.url,
        preview=False,
        on_status=on_status,
        on_result=lambda rid, computed: results.append(rid),
    )
    session.submit(1, Level("top", "mlp_out"), Settings())
    wait_for(lambda: (1, "QUEUED") in statuses)
    session.submit(2, Level("top", "attn_out"), Settings())
    wait_for(lambda: results == [2])
    assert (1, "RUNNING") not in statuses  # the next status after the cancel ended the wait
    assert 1 not in results
    session.close()


def test_a_server_error_reaches_the_widget(demo, client, ndif):
    w = pw.explore(client, **TEXTS, remote=ndif.url, preview=False)
    ndif.fail_with = "CUDA out of memory on the server"
    w._on_msg(w, {"type": "drill", "request_id": 1, "panel": "resid_pre", "row": 1, "col": 3}, [])
    wait_for(lambda: w.status.get("state") == "error")
    assert "CUDA out of memory on the server" in w.status["message"]
    assert len(w.path) == 1  # still showing the grid it had
    w.close()


@pytest.mark.parametrize("remote", [3, None, ["local"]])
def test_a_bad_remote_setting_fails_before_compute(demo, remote):
    with pytest.raises(pw.PatchwidgetError, match="remote must be"):
        pw.patch(demo, **TEXTS, remote=remote)


def test_remote_with_a_model_ndif_cannot_name_fails_clearly(demo, monkeypatch):
    from nnsight.modeling import huggingface

    monkeypatch.delitem(huggingface._ID_CACHE, demo.repo_id, raising=False)  # as the client fixture names it
    with pytest.raises(pw.PatchwidgetError, match="hub name") as err:
        pw.patch(demo, **TEXTS, remote=True)
    assert demo.repo_id in str(err.value)
    with pytest.raises(pw.PatchwidgetError, match="hub name"):
        pw.explore(demo, **TEXTS, remote="https://ndif.example")


# --- the server's nnsight version -----------------------------------------------------------------------------------

CLIENT_NNSIGHT = importlib.metadata.version("nnsight")


def test_a_server_on_another_nnsight_is_refused_before_anything_is_sent(demo, client):
    from tests.fake_ndif import FakeNDIF

    with FakeNDIF(demo, server_version="0.8.99") as server:
        with pytest.raises(pw.RemoteSettingError, match=r"runs nnsight 0\.8\.99") as err:
            pw.patch(client, **TEXTS, remote=server.url)
        with pytest.raises(pw.RemoteSettingError, match=r"runs nnsight 0\.8\.99"):
            pw.explore(client, **TEXTS, remote=server.url, preview=False)
        assert (server.env_queries, server.requests, server.refused) == (1, 0, 0)  # no trace; /env asked once
    assert isinstance(err.value, pw.RemoteVersionError)
    message = str(err.value)
    assert f"this client has nnsight {CLIENT_NNSIGHT}" in message and server.url in message
    assert 'pip install "nnsight==0.8.99"' in message


def test_a_server_outside_the_supported_nnsight_says_patchwidget_cannot_run_there(demo, client):
    from tests.fake_ndif import FakeNDIF

    with FakeNDIF(demo, server_version="0.9.0") as server:
        with pytest.raises(pw.RemoteSettingError) as err:
            pw.patch(client, **TEXTS, remote=server.url)
        assert server.requests == 0
    message = str(err.value)
    assert "runs nnsight 0.9.0" in message and f"client has nnsight {CLIENT_NNSIGHT}" in message
    assert "supports nnsight>=0.8.1,<0.9" in message and "pip install" not in message  # no install would fit


def test_a_servers_minimum_client_version_is_named_clearly(demo, client):
    """A server without /env that refuses older clients: its first reply, the HTTP 400, becomes the clear error."""
    from tests.fake_ndif import FakeNDIF

    with FakeNDIF(demo, server_version=None, min_client_version="0.8.77") as server:
        with pytest.raises(pw.RemoteSettingError, match=r"accepts nnsight 0\.8\.77 or newer") as err:
            pw.patch(client, **TEXTS, remote=server.url)
        assert (server.refused, server.requests) == (1, 0)  # refused at the first request, nothing ran
        server.min_client_version = None  # the widget opens, then the server starts refusing: the listener's path
        w = pw.explore(client, **TEXTS, remote=server.url, preview=False)
        server.min_client_version = "0.8.77"
        w._on_msg(w, {"type": "drill", "request_id": 1, "panel": "resid_pre", "row": 1, "col": 3}, [])
        wait_for(lambda: w.status.get("state") == "error")
        w.close()
    assert isinstance(err.value, pw.RemoteVersionError)
    for message in (str(err.value), w.status["message"]):
        assert f"this client has nnsight {CLIENT_NNSIGHT}" in message
        assert 'pip install "nnsight>=0.8.77,<0.9"' in message
        assert f"The server said: Failed to send request: Client nnsight version {CLIENT_NNSIGHT} is below" in message


def test_a_server_on_the_same_nnsight_runs_as_before(demo, client):
    from tests.fake_ndif import FakeNDIF

    with FakeNDIF(demo, min_client_version=CLIENT_NNSIGHT) as server:
        remote = pw.patch(client, **TEXTS, site="mlp_out", remote=server.url)
        assert server.env_queries == 1 and server.refused == 0 and server.requests >= 2
        pw.patch(client, **TEXTS, site="mlp_out", layers=[0], remote=server.url)
        assert server.env_queries == 1  # asked once per host: /env may be slow, and each click prepares a request
    assert_close(remote.per_pair, pw.patch(demo, **TEXTS, site="mlp_out").per_pair, 1e-5)


def test_the_nnsight_pin_is_pyprojects():
    from pathlib import Path

    import tomllib

    from patchwidget.core.remote import NNSIGHT_PIN

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert f"nnsight{NNSIGHT_PIN}" in project["project"]["dependencies"]
