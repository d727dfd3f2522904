"""Pods for the kernel tier: network namespaces with a veth each, and tiny servers that answer with their
name.

The servers and clients are threads and sockets of the test process itself: a socket belongs to the network
namespace its creator was in when it was made, so a short-lived thread joins the pod's namespace, makes the
socket and leaves. That spares a Python start per pod, which costs seconds in the slow guest."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(netns: str | None, work: Callable[[], T]) -> T:
    """`work()` in a thread that joined the namespace (sockets belong to their creator's namespace); None:
    here."""
    if netns is None:
        return work()
    results: list[T] = []
    failures: list[OSError] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                failures.append(OSError(code, f"setns into {netns}: {os.strerror(code)}"))
                return
            results.append(work())
        except OSError as error:
            failures.append(error)
        finally:
            os.close(fd)

    worker = threading.Thread(target=run, name=f"setns-{netns}")
    worker.start()
    worker.join()
    if failures:
        raise failures[0]
    return results[0]


def socket_in(netns: str, family: int, kind: int) -> socket.socket:
    return in_netns(netns, lambda: socket.socket(family, kind))


class Outcome(StrEnum):
    """What a client saw. `refused` is the dead pod answering with RST (TCP) or port unreachable (UDP)."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    RESET = "reset"


@dataclass(frozen=True)
class Reply:
    pod: str | None
    outcome: Outcome | None

    def __str__(self) -> str:
        return f"pod {self.pod}" if self.pod else str(self.outcome)


def _classify(error: OSError) -> Outcome:
    if isinstance(error, TimeoutError):
        return Outcome.TIMEOUT
    if error.errno == errno.ECONNREFUSED:
        return Outcome.REFUSED
    if error.errno == errno.ECONNRESET:
        return Outcome.RESET
    if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Outcome.UNREACHABLE
    raise error


class PodServer:
    """Answers every HTTP request (HTTP/1.0 over TCP), or UDP datagram, with the pod's name.

    The server closes first, as HTTP servers do, so the kernel's entry ends in TIME_WAIT, the state that is
    reused.
    """

    def __init__(self, netns: str, name: str, port: int, kind: int) -> None:
        self.name = name
        self._kind = kind
        self._socket = socket_in(netns, socket.AF_INET, kind)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("0.0.0.0", port))
        if kind == socket.SOCK_STREAM:
            self._socket.listen(64)
        self._stopped = threading.Event()
        serve: Callable[[], None] = self._serve_tcp if kind == socket.SOCK_STREAM else self._serve_udp
        self._thread = threading.Thread(target=serve, name=f"pod-{name}", daemon=True)
        self._thread.start()

    def _serve_tcp(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with connection:
                self._answer_http(connection)

    def _answer_http(self, connection: socket.socket) -> None:
        connection.settimeout(5)
        request = b""
        try:
            while b"\r\n\r\n" not in request and (chunk := connection.recv(1024)):
                request += chunk
            body = f"{self.name}\n".encode()
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            connection.sendall(head.encode() + body)
        except OSError:
            return  # the client went away; the next connection is what matters

    def _serve_udp(self) -> None:
        while not self._stopped.is_set():
            try:
                _, peer = self._socket.recvfrom(512)
                if peer is None:
                    return  # shut down: kill() or close() woke the read
                self._socket.sendto(f"{self.name}\n".encode(), peer)
            except OSError:
                return

    def kill(self) -> None:
        """The pod's process dies; its namespace and address stay, as while a pod terminates."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        # shutdown wakes the blocked accept/recvfrom; close alone does not on Linux.
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError as error:
            if error.errno != errno.ENOTCONN:
                raise
        self._socket.close()
        self._thread.join(timeout=10)


class Client:
    """A client pod that always uses the same source port, as a busy client's port reuse does."""

    def __init__(self, netns: str, source_port: int, timeout_seconds: float = 3.0) -> None:
        self._netns = netns
        self._source_port = source_port
        self._timeout = timeout_seconds

    def _socket(self, kind: int) -> socket.socket:
        made = socket_in(self._netns, socket.AF_INET, kind)
        made.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        made.settimeout(self._timeout)
        made.bind(("0.0.0.0", self._source_port))
        return made

    def tcp(self, address: str, port: int) -> Reply:
        with self._socket(socket.SOCK_STREAM) as connection:
            try:
                connection.connect((address, port))
                connection.sendall(f"GET / HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
                received = b""
                while chunk := connection.recv(256):
                    received += chunk
            except OSError as error:
                return Reply(None, _classify(error))
        status, _, body = received.decode().partition("\r\n\r\n")
        assert status.startswith("HTTP/1.0 200"), f"not an HTTP answer: {received!r}"
        return Reply(body.strip(), None)

    def connect_and_hold(self, address: str, port: int) -> socket.socket:
        """An established connection left open, which IPVS counts as active; the caller closes it."""
        connection = self._socket(socket.SOCK_STREAM)
        connection.connect((address, port))
        return connection

    def udp(self, address: str, port: int) -> Reply:
        with self._socket(socket.SOCK_DGRAM) as flow:
            try:
                flow.connect((address, port))
                flow.send(b"who?\n")
                received = flow.recv(512)
            except OSError as error:
                return Reply(None, _classify(error))
        return Reply(received.decode().strip(), None)
