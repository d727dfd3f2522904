"""The reader of /proc/net/ip_vs_conn (IPVS's connection table), on the kernel's own text captured in the VM
(tests/fixtures/proc-net-ip_vs_conn.txt, made by tests/kernel/conn_capture.py) and on lines in the kernel's
format for what that capture does not hold (IPv6, a persistence engine, an old kernel's header)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ipvs_reaper.ipvs.connections import count_by_virtual, parse_ip_vs_conn
from ipvs_reaper.ipvs.procfs import TableParseError

FIXTURES = Path(__file__).with_name("fixtures")
HEADER = "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"


def test_the_kernels_own_table_from_the_vm() -> None:
    connections = parse_ip_vs_conn((FIXTURES / "proc-net-ip_vs_conn.txt").read_text(), "capture")
    counted = count_by_virtual(connections)
    ip = ipaddress.ip_address
    # tests/kernel/conn_capture.py: three TCP connections to 10.96.0.20:3306 (one held open), a UDP flow to
    # 10.96.0.10:53, one TCP connection to the persistent 10.96.0.30:80 (and its template, not counted).
    assert counted == {
        ("TCP", ip("10.96.0.20"), 3306): 3,
        ("UDP", ip("10.96.0.10"), 53): 1,
        ("TCP", ip("10.96.0.30"), 80): 1,
    }
    held = [c for c in connections if c.client_port == 40001]
    assert [(c.state, c.destination, c.destination_port) for c in held] == [
        ("ESTABLISHED", ip("10.244.1.3"), 3306)
    ]
    templates = [c for c in connections if c.template]
    assert [(c.virtual, c.virtual_port, c.state) for c in templates] == [(ip("10.96.0.30"), 80, "ASSURED")]


def test_ipv6_a_persistence_engine_and_an_old_header() -> None:
    virtual, client = "fd00:0000:0000:0000:0000:0000:0000:0020", "fd00:0010:0244:0009:0000:0000:0000:0009"
    real = "fd00:0010:0244:0001:0000:0000:0000:0003"
    text = (
        "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires\n"
        f"TCP {client} 9C41 {virtual} 0CEA {real} 0CEA ESTABLISHED     899\n"
        "UDP 0AF40909 13C4 0A60000A 13C4 0AF40103 13C4 UDP             298 sip 1234@example\n"
    )
    tcp, udp = parse_ip_vs_conn(text, "t")
    assert (tcp.virtual, tcp.virtual_port, tcp.client_port) == (ipaddress.ip_address("fd00::20"), 3306, 40001)
    assert (udp.engine, udp.expires, udp.state) == ("sip 1234@example", 298, "UDP")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: expected the header"),
        ("IPVS connection entries\npro expire state source\n", "looks like `ipvsadm -Lnc`"),
        (
            HEADER + "TCP 0AF40909 C350 0A600014 0CEA 0AF40103 0CEA ESTABLISHED\n",
            "line 2: a connection line is",
        ),
        (
            HEADER + "TCP 10.0.0.1 C350 0A600014 0CEA 0AF40103 0CEA ESTABLISHED 9\n",
            "line 2: expected 8 hex digits",
        ),
        (
            HEADER + "TCP 0AF40909 C350Z 0A600014 0CEA 0AF40103 0CEA ESTABLISHED 9\n",
            "line 2: expected 4 hex digits",
        ),
        (
            HEADER + "TCP 0AF40909 C350 0A600014 0CEA 0AF40103 0CEA ESTABLISHED -1\n",
            "line 2: Expires -1 out of",
        ),
        (
            HEADER + "TCP fd00::1 C350 0A600014 0CEA 0AF40103 0CEA ESTABLISHED 9\n",
            "line 2: expected an exploded IPv6",
        ),
    ],
)
def test_what_is_not_the_kernels_text_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(TableParseError, match=message.replace("(", r"\(")):
        parse_ip_vs_conn(text, "t")
