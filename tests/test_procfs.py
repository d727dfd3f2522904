from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from ipvs_reaper.ipvs.procfs import TableParseError, parse_proc_ip_vs, render_proc_ip_vs
from ipvs_reaper.values import IpvsTable, Protocol, VirtualKey
from tests.ipvsadm_text import list_counters, parse_restore_format, rows, table_counters
from tests.strategies import tables


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
    text = "FWM  00000007 wlc \n  -> [fd00::1]:0000      Route   1      0          0         \n"
    table = parse_proc_ip_vs(text)
    assert table.services[0].key.family == 6
    assert table.real_servers[0].key.virtual == table.services[0].key


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq 1 0\n", 2, "real-server line"),
        ("  -> 0A000002:0050 Masq 1 0 0\n", 1, "before any virtual service"),
        ("ICMP  0A000001:0050 rr\n", 1, "unknown protocol"),
        ("TCP  0A0001:0050 rr\n", 1, "8 hex digits"),
        ("TCP  0A000001:1FFFF rr\n", 1, "out of range"),
        ("TCP  0A000001:0050 rr bogus\n", 1, "unknown service flags"),
        ("TCP  [fd00::1:0050 rr\n", 1, "unterminated"),
        ("TCP  0A000001:0050 rr\n  -> 0A000002:0050 Masq x 0 0\n", 2, "invalid literal"),
    ],
)
def test_bad_lines_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(TableParseError) as caught:
        parse_proc_ip_vs(text, source="node.txt")
    assert caught.value.line_number == line
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"node.txt: line {line}:")
