"""A pod of the rollout lab: `python -m bench.rollout.pod NAME PORT SLOW_SECONDS`, started in the pod's
network namespace.

It answers `GET /` with its name and the client's source port as it saw it (how the lab measures port
reuse behind nginx), and `GET /slow` the same after SLOW_SECONDS (a request still in flight when the pod is
told to stop). HTTP/1.0, and the server closes first, as HTTP servers do, so the connection entry ends in
TIME_WAIT, the state a reused source port meets.

On SIGTERM it does what a well-behaved pod does: it closes its listener at once (a SYN that still reaches it
is refused), finishes the requests it has, and exits when none is left. The lab kills it at its
terminationGracePeriodSeconds if it has not exited by then."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from types import FrameType


def answer(connection: socket.socket, name: str, slow_seconds: float) -> None:
    with connection:
        connection.settimeout(30)
        try:
            request = b""
            while b"\r\n\r\n" not in request and (chunk := connection.recv(1024)):
                request += chunk
            if request.startswith(b"GET /slow"):
                time.sleep(slow_seconds)
            body = f"{name} {connection.getpeername()[1]}\n".encode()
            # No Content-Length: the answer ends when the server closes, so nginx too waits for the server's
            # FIN and the TIME_WAIT is the pod's, never the client's (whose narrowed port range it would eat).
            head = "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n"
            connection.sendall(head.encode() + body)
        except OSError:
            return  # the client went away; the next connection is what matters


def serve(name: str, port: int, slow_seconds: float) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(128)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() makes the blocked (or next) accept() fail; a connection already accepted is answered.
        listener.shutdown(socket.SHUT_RDWR)

    signal.signal(signal.SIGTERM, stop)
    handlers: list[threading.Thread] = []
    while True:
        try:
            connection, _ = listener.accept()
        except OSError:
            break
        handler = threading.Thread(target=answer, args=(connection, name, slow_seconds), daemon=True)
        handler.start()
        handlers = [alive for alive in handlers if alive.is_alive()] + [handler]
    listener.close()
    for handler in handlers:
        handler.join()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
