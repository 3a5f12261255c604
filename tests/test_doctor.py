"""``patchwidget doctor`` (issue 31): a healthy machine passes every check, and each failure it reports is
reported: a bundle built for another protocol, a model that gives other numbers, a server that does not
answer, a package outside its range."""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import shutil
import socket
import threading

import pytest
import torch

import patchwidget as pw
from patchwidget import health as D
from patchwidget.cli import main
from patchwidget.ui.protocol import fingerprint


def test_a_healthy_machine_passes_and_says_what_it_has(capsys):
    report = pw.doctor()
    assert report.ok, str(report)
    names = [c.name for c in report.checks]
    assert names == ["python", "packages", "front end", "patch", "notebook", "NDIF"]
    assert report.checks[-1].state == "skip"  # no API key on a test machine
    packages = report.checks[1].detail
    assert packages.startswith(f"patchwidget {pw.__version__}, torch {torch.__version__}")
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["ok"] * 5 + ["skip"]


def test_a_bundle_built_for_another_protocol_is_named(tmp_path):
    shutil.copytree(D.STATIC, tmp_path, dirs_exist_ok=True)
    bundle = tmp_path / "widget.js"
    bundle.write_text(bundle.read_text().replace(fingerprint(), "0123456789ab"))
    check = D.check_bundle(tmp_path)
    assert check.state == "FAIL" and "another version of the widget protocol" in check.detail
    assert fingerprint() in check.detail and "npm run build" in check.detail
    bundle.unlink()
    missing = D.check_bundle(tmp_path)
    assert missing.state == "FAIL" and "no bundle" in missing.detail


def test_a_model_that_gives_other_numbers_fails_the_patch_check():
    model = pw.load_model()  # a fresh copy: the perturbation stays in this test
    with torch.no_grad():
        model._module.transformer.h[1].mlp.c_fc.weight.mul_(1.2)
    check = D.check_patch(model)
    assert check.state == "FAIL" and "other numbers than when tested" in check.detail
    assert "(expected 1.4909)" in check.detail or "(expected 5.0026)" in check.detail
    assert D.check_patch(pw.load_model()).state == "ok"


def test_a_package_outside_its_range_is_named(monkeypatch):
    monkeypatch.setattr(D.metadata, "requires", lambda name: ["torch<1", "pytest>=8; extra == 'dev'"])
    check = D.check_packages()
    assert check.state == "FAIL" and f"torch {torch.__version__} is outside torch<1" in check.detail
    assert "pytest" not in check.detail  # the dev extra is not this machine's business


class _Status(http.server.BaseHTTPRequestHandler):
    nnsight = importlib.metadata.version("nnsight")  # what /env says the server runs

    def do_GET(self):
        replies = {
            "/status": {"deployments": {"openai-community/gpt2": {"deployment_level": "HOT"}}},
            "/env": {"python_version": "3.11", "packages": {"nnsight": self.nnsight}},
        }
        body = json.dumps(replies.get(self.path, {})).encode()
        self.send_response(200 if self.path in replies else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def status_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ndif_answers_or_is_said_not_to(status_server, capsys):
    answered = D.check_ndif(status_server)
    assert answered.state == "ok" and "answers: 1 model deployment(s)" in answered.detail
    assert f"nnsight {_Status.nnsight}, as here" in answered.detail


def test_ndif_on_another_nnsight_fails_naming_both(status_server, monkeypatch):
    monkeypatch.setattr(_Status, "nnsight", "0.8.99")
    check = D.check_ndif(status_server)
    assert check.state == "FAIL" and "runs nnsight 0.8.99" in check.detail
    assert 'pip install "nnsight==0.8.99"' in check.detail


def test_ndif_down_is_said(capsys):
    url = closed_url()
    down = D.check_ndif(url)
    assert down.state == "FAIL" and f"{url} does not answer" in down.detail
    assert main(["doctor", "--ndif", url]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"FAIL  NDIF: {url} does not answer")


def closed_url() -> str:
    """A local URL nothing listens on (a port bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
