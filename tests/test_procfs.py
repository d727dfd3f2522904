from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs, render_proc_ip_vs
from ipvs_reaper.values import IpvsTable, Protocol, VirtualKey
from tests.ipvsadm_text import list_counters, parse_restore_format, rows, table_counters
from tests.strategies import tables

HEADER = "IP Virtual Server version 1.2.1 (size=4096)\n"


def test_kernel_capture_matches_ipvsadm_restore_format(fixtures: Path) -> None:
    table = parse_proc_ip_vs((fixtures / "proc-net-ip_vs.txt").read_text())
    expected = parse_restore_format((fixtures / "ipvsadm-Sn.txt").read_text())
    assert rows(table) == expected
    assert len(table.services) == 8


def test_kernel_capture_flags(fixtures: Path) -> None:
    table = parse_proc_ip_vs((fixtures / "proc-net-ip_vs.txt").read_text())
    by_text = {str(s.key): s for s in table.services}
    assert by_text["10.96.77.1:6379"].persistent
    assert not by_text["10.96.12.7:443"].persistent
    assert by_text["fwmark:42"].key == VirtualKey.firewall_mark(42)
    assert by_text["10.96.40.2:3868"].key.protocol is Protocol.SCTP
    assert by_text["[fd00:10:96::a]:80"].key.family == 6


def test_capture_matches_ipvsadm_list_counters(fixtures: Path) -> None:
    table = parse_proc_ip_vs((fixtures / "proc-net-ip_vs.txt").read_text())
    assert list_counters((fixtures / "ipvsadm-Ln.txt").read_text()) == table_counters(table)


@given(tables())
def test_render_then_parse_is_identity(table: IpvsTable) -> None:
    parsed = parse_proc_ip_vs(render_proc_ip_vs(table))
    # A fwmark service's family is not printed; the parser takes it from its first real server.
    assert [
        (s.key.protocol, s.key.address, s.key.port, s.key.fwmark, s.scheduler, s.persistent)
        for s in parsed.services
    ] == [
        (s.key.protocol, s.key.address, s.key.port, s.key.fwmark, s.scheduler, s.persistent)
        for s in table.services
    ]
    assert [
        (r.key.address, r.key.port, r.forward, r.weight, r.active_conns, r.inactive_conns)
        for r in parsed.real_servers
    ] == [
        (r.key.address, r.key.port, r.forward, r.weight, r.active_conns, r.inactive_conns)
        for r in table.real_servers
    ]


def test_fwmark_family_comes_from_its_first_real_server() -> None:
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "FWM  00000007 wlc \n"
        "  -> [FD00:0000:0000:0000:0000:0000:0000:0001]:0000      Route   1      0          0\n"
    )
    table = parse_proc_ip_vs(text)
    assert table.services[0].key.family == 6
    assert table.real_servers[0].key.virtual == table.services[0].key


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 1 0\n", 3, "real-server line"),
        ("  -> 0A000002:0050 Masq 1 0 0\n", 2, "before any virtual service"),
        ("ICMP  0A000001:0050 rr\n", 2, "unknown protocol"),
        ("TCP  0A0001:0050 rr\n", 2, "8 hex digits"),
        ("TCP  0A000001:1FFFF rr\n", 2, "4 hex digits for a port"),
        ("TCP  0A000001:0050 rr bogus\n", 2, "unknown service flags"),
        ("TCP  [fd00::1:0050 rr\n", 2, "ipvsadm"),
        ("TCP  [FD00:0000:0000:0000:0000:0000:0000:0001:0050 rr\n", 2, "exploded IPv6 address"),
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq x 0 0\n", 3, "weight: expected a whole number"),
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq -1 0 0\n", 3, "weight -1 out of range"),
        (
            "TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 4294967296 0 0\n",
            3,
            "weight 4294967296 out of range",
        ),
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 1 18446744073709551616 0\n", 3, "ActiveConn"),
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 1 0 -9223372036854775809\n", 3, "InActConn"),
        ("TCP  0A000001:+050 rr\n", 2, "4 hex digits for a port"),
        ("FWM  7 rr\n", 2, "8 hex digits for a firewall mark"),
    ],
)
def test_bad_lines_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(TableParseError) as caught:
        parse_proc_ip_vs(HEADER + text, source="node.txt")
    assert caught.value.line_number == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"node.txt: line {line}:")


def test_a_counter_bug_showing_a_negative_count_still_reads() -> None:
    # Kernels have shown negative InActConn; refusing the table would stop the reaper on that node.
    text = "TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 0 -1 -3\n"
    (rs,) = parse_proc_ip_vs(HEADER + text).real_servers
    assert (rs.active_conns, rs.inactive_conns) == (-1, -3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: empty: a copy of /proc/net/ip_vs starts with 'IP Virtual Server version'"),
        ("\n\n", "line 1: empty"),
        ("hello\n", "line 1: expected 'IP Virtual Server version ...'"),
        ("-A -t 10.96.0.1:443 -s rr\n", "line 1: this looks like `ipvsadm` output"),
    ],
)
def test_what_is_not_a_proc_table_is_refused(text: str, message: str) -> None:
    with pytest.raises(TableParseError) as caught:
        parse_proc_ip_vs(text, source="node.txt")
    assert str(caught.value) == f"node.txt: {message}" or str(caught.value).startswith(f"node.txt: {message}")


def test_ipvsadm_list_output_is_refused_with_a_hint(fixtures: Path) -> None:
    # Its header is the kernel's, and its IPv6 lines would parse as hex with wrong ports: refused by form.
    with pytest.raises(TableParseError, match="looks like `ipvsadm` output"):
        parse_proc_ip_vs((fixtures / "ipvsadm-Ln.txt").read_text())
    ipv6_only = HEADER + "TCP  [fd00:10:96::a]:80 rr\n  -> [fd00:10:244:2::7]:8080 Masq 0 0 0\n"
    with pytest.raises(TableParseError, match="looks like `ipvsadm` output"):
        parse_proc_ip_vs(ipv6_only)
