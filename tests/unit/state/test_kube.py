"""The raw-JSON client against a loopback HTTP server, through a kubeconfig as the extender builds it:
an answer that breaks off after the request reached the API is an error whose outcome is unknown
(a Binding may have taken), never a raw exception from deep in the HTTP library."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scheduler.state.kube import Kube, KubeError, load_api_client
from tests.builders import kubeconfig

ANSWERS = {
    # path -> (status, declared length, body sent)
    "/truncated": (201, 200, b'{"kind": "Sta'),
    "/garbage": (201, 9, b"not json!"),
    "/refused": (409, 43, b'{"message": "pod p is already assigned"}   '),
    "/fine": (201, 2, b"{}"),
}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, length, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[Kube]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_port}")
    try:
        yield Kube(load_api_client(str(config), retries=False))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("path", "status", "unknown", "words"),
    [
        ("/truncated", 0, True, "the answer broke off (201)"),  # 13 of 200 bytes came
        ("/garbage", 0, True, "the answer is not JSON (201)"),
        ("/refused", 409, False, "pod p is already assigned"),  # a clear no: nothing took
    ],
)
def test_an_answer_that_breaks_off_is_an_error_of_unknown_outcome(
    kube: Kube, path: str, status: int, unknown: bool, words: str
) -> None:
    with pytest.raises(KubeError) as raised:
        kube.post(path, {"kind": "Binding"})
    assert raised.value.status == status and raised.value.outcome_unknown is unknown
    assert words in str(raised.value)


def test_a_whole_answer_is_read(kube: Kube) -> None:
    assert kube.post("/fine", {"kind": "Binding"}) == {}
