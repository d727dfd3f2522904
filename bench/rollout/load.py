"""The rollout lab's client, `ab -r`-like: `python -m bench.rollout.load ADDRESS PORT OUT [options]`, started
in a client's network namespace. Concurrency 10 without keep-alive (one connection per request), at most
--rate requests a second in all, every --slow-every'th request asks for `/slow`. It runs until SIGTERM,
then writes one JSON array per request to OUT:

    [start, connect_seconds | null, seconds, outcome, pod | null, source_port_seen_by_pod | null, local_port]

`start` is CLOCK_MONOTONIC, which the lab's own event times share (one machine). `outcome` is `ok`, a
connect failure (`refused`, `timeout`, `unreachable`, `reset`), `cut` (connected, then reset, timed out or
closed before a whole answer) or `http-<status>` for an answer other than 200 (nginx's 502 and 504)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

CONNECT_ERRORS = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
}


class Pace:
    """Start times spaced 1/rate apart, shared by every worker: a ceiling, not a target (ab has none)."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._gap
        await asyncio.sleep(slot - now)


async def request(address: str, port: int, path: str, options: argparse.Namespace) -> list[Any]:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as connection:
        connection.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(connection, (address, port)), options.connect_timeout)
        except TimeoutError:
            return [started, None, time.monotonic() - started, "timeout", None, None, None]
        except OSError as error:
            outcome = CONNECT_ERRORS.get(error.errno or 0, f"errno-{error.errno}")
            return [started, None, time.monotonic() - started, outcome, None, None, None]
        connected = time.monotonic() - started
        local_port = connection.getsockname()[1]
        received = b""
        try:
            await loop.sock_sendall(connection, f"GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n".encode())
            async with asyncio.timeout(options.timeout):
                while chunk := await loop.sock_recv(connection, 4096):
                    received += chunk
        except (TimeoutError, OSError):
            return [started, connected, time.monotonic() - started, "cut", None, None, local_port]
    seconds = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "none"
    if status != "200":
        outcome = "cut" if status == "none" else f"http-{status}"
        return [started, connected, seconds, outcome, None, None, local_port]
    pod, _, seen_port = body.decode().strip().partition(" ")
    return [started, connected, seconds, "ok", pod, int(seen_port), local_port]


async def run(options: argparse.Namespace) -> list[list[Any]]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pace = Pace(options.rate)
    records: list[list[Any]] = []

    async def worker() -> None:
        while not stop.is_set():
            await pace.wait()
            if stop.is_set():
                return
            path = "/slow" if len(records) % options.slow_every == options.slow_every - 1 else "/"
            records.append(await request(options.address, options.port, path, options))

    await asyncio.gather(*(worker() for _ in range(options.concurrency)))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout.load")
    parser.add_argument("address")
    parser.add_argument("port", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--concurrency", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument(
        "--rate", type=float, default=25.0, help="requests a second at most (default: %(default)s)"
    )
    parser.add_argument("--slow-every", type=int, default=20, help="(default: %(default)s)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds for the answer (default: %(default)s)"
    )
    options = parser.parse_args()
    records = asyncio.run(run(options))
    options.out.write_text("\n".join(json.dumps(record) for record in records) + "\n")


if __name__ == "__main__":
    main()
