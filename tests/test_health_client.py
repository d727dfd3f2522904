"""`ipvs-reaper health`: the runbooks' way to read the agent's endpoints from its pod (no curl there)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from ipvs_reaper.cli import main
from tests.agent.harness import free_port


class _Agent(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = {"/readyz": (503, "not listed yet: EndpointSlice\n"), "/healthz": (200, "ok")}.get(
            self.path, (404, "")
        )
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", free_port()), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_readyz_is_printed_and_its_status_is_the_exit_code(
    agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["health", "--address", agent]) == 1
    out, err = capsys.readouterr()
    assert out == "not listed yet: EndpointSlice\n" and "/readyz answered 503" in err
    assert main(["health", "healthz", "--address", agent]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_nothing_listening_is_said_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["health", "--address", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ipvs-reaper: no answer from the agent at {address}:") and err.count("\n") == 1


def test_a_bad_address_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--address", "nope"]) == 2
    assert "--address: expected HOST:PORT, got 'nope'" in capsys.readouterr().err


def test_the_default_is_the_agents_default_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["health", "--help"])
    assert "(default: 127.0.0.1:10373)" in " ".join(capsys.readouterr().out.split())
