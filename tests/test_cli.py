from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipvs_reaper.cli import NodeAccess, main
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.ipvs.procfs import parse_proc_ip_vs
from ipvs_reaper.kernel.sysctl import FakeSysctls

OFFLINE = ["--node-name", "node-a", "--cluster-state", "examples/cluster.json"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def scan_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    assert main(["scan", *OFFLINE, "--ipvs-table", "examples/ip_vs.txt", "-o", "json", *extra]) == 0
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


def test_scan_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    document = scan_json(capsys, "--kernel-release", "6.1.0-18-amd64", "--sysctls", "examples/sysctl.txt")
    assert set(document) == {
        "schemaVersion",
        "node",
        "kernel",
        "refusal",
        "warnings",
        "summary",
        "realServers",
    }
    assert document["schemaVersion"] == 1
    assert document["refusal"] is None and document["warnings"] == []
    assert document["summary"] == {"reap": 6, "wait": 2, "keep": 2}
    assert document["node"] == "node-a"
    kernel = document["kernel"]
    assert isinstance(kernel, dict)
    assert (kernel["exposure"], kernel["connReuseMode"], kernel["expireNodestConn"]) == ("exposed", 0, 0)
    rows = document["realServers"]
    assert isinstance(rows, list)
    keys = {
        "protocol",
        "virtual",
        "real",
        "weight",
        "activeConns",
        "inactiveConns",
        "service",
        "endpointState",
        "decision",
        "reason",
        "reapAfter",
    }
    assert all(set(row) == keys for row in rows)
    assert all(row["weight"] == 0 for row in rows)
    by_real = {(row["virtual"], row["real"]): row for row in rows}
    assert by_real["10.96.12.7:443", "10.244.4.9:8443"]["decision"] == "reap"
    assert by_real["[fd00:10:96::a]:80", "[fd00:10:244:2::7]:8080"]["endpointState"] == "ready"
    assert by_real["[fd00:10:96::a]:80", "[fd00:10:244:2::7]:8080"]["decision"] == "keep"
    assert by_real["172.17.0.1:8080", "10.0.0.9:8080"]["service"] is None
    assert by_real["10.96.0.10:53", "10.244.1.6:53"]["protocol"] == "UDP"
    wait = by_real["10.96.40.2:3868", "10.244.2.8:3868"]
    assert (wait["decision"], wait["endpointState"]) == ("wait", "not-ready")
    assert isinstance(wait["reapAfter"], str) and wait["reapAfter"].endswith("Z")


def test_scan_all_lists_weighted_real_servers(capsys: pytest.CaptureFixture[str]) -> None:
    rows = scan_json(capsys, "--all")["realServers"]
    assert isinstance(rows, list)
    assert any(row["weight"] > 0 for row in rows)


def test_scan_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", *OFFLINE, "--ipvs-table", "examples/ip_vs.txt"]) == 0
    out = capsys.readouterr().out
    assert "PROTO" in out and "shop/web" in out
    assert "6 to reap, 2 waiting, 2 kept" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scan", *OFFLINE, "--ipvs-table", "missing.txt"], "missing.txt: No such file"),
        (["scan", *OFFLINE, "--ipvs-table", "examples/cluster.json"], "examples/cluster.json: line 1:"),
        (
            [
                "scan",
                "--node-name",
                "n",
                "--cluster-state",
                "examples/ip_vs.txt",
                "--ipvs-table",
                "examples/ip_vs.txt",
            ],
            "examples/ip_vs.txt: expected a List with 'items'",
        ),
        (
            ["reap", "--once", *OFFLINE, "--ipvs-table", "examples/ip_vs.txt"],
            "reap acts on the live kernel table",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1


def test_bad_config_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("policy:\n  gone:\n    reep: always\n")
    assert main(["scan", *OFFLINE, "--ipvs-table", "examples/ip_vs.txt", "--config", str(config)]) == 2
    assert "policy.gone.reep: unknown key" in capsys.readouterr().err


def test_reap_requires_once() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["reap", *OFFLINE])
    assert caught.value.code == 2


def live(tmp_path: Path, nodest: int = 0, writable: bool = True) -> tuple[NodeAccess, FakeIpvs, FakeSysctls]:
    fake = FakeIpvs(parse_proc_ip_vs((ROOT / "examples" / "ip_vs.txt").read_text()))
    sysctls = FakeSysctls(
        {"conn_reuse_mode": 0, "expire_nodest_conn": nodest, "expire_quiescent_template": 1}, writable
    )
    (tmp_path / "osrelease").write_text("6.1.0-18-amd64\n")
    return NodeAccess(fake, sysctls, proc_kernel=tmp_path, local_addresses=lambda: ()), fake, sysctls


def test_reap_once_fixes_the_incident_with_no_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    access, fake, sysctls = live(tmp_path)
    before = set(fake.real_servers)
    assert main(["reap", "--once", *OFFLINE, "-o", "json"], node_access=access) == 0
    document = json.loads(capsys.readouterr().out)
    deleted = {(str(k.virtual), str(k.address)) for k in before - set(fake.real_servers)}
    assert deleted == {
        ("10.96.12.7:443", "10.244.4.9"),
        ("192.168.49.2:31234", "10.244.4.9"),
        ("198.51.100.7:443", "10.244.4.9"),
        ("10.96.0.10:53", "10.244.1.6"),
        ("[fd00:10:96::a]:80", "fd00:10:244:2::9"),
        ("203.0.113.10:80", "10.244.6.4"),  # gone with ActiveConn 2: nothing alive holds those
    }
    assert sysctls.values["expire_nodest_conn"] == 1
    assert {r["outcome"] for r in document["results"]} == {"deleted"}
    assert document["kernel"]["release"] == "6.1.0-18-amd64"
    # Every weighted real server, the ready weight-0 one and the unmapped ones are still there.
    assert all(rs.key in fake.real_servers for rs in fake.read_table().real_servers if rs.weight > 0)
    assert any(str(k.address) == "fd00:10:244:2::7" for k in fake.real_servers)
    assert any(str(k.virtual) == "fwmark:42" for k in fake.real_servers)


def test_reap_dry_run_and_report_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    access, fake, sysctls = live(tmp_path)
    assert main(["reap", "--once", "--dry-run", *OFFLINE], node_access=access) == 0
    assert fake.deleted == [] and sysctls.writes == []
    assert "would-delete" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    config.write_text("expireNodestConn: report-only\n")
    assert main(["reap", "--once", *OFFLINE, "--config", str(config)], node_access=access) == 1
    assert fake.deleted == [] and sysctls.writes == []
    said = capsys.readouterr()
    assert "report-only" in said.out
    assert "refused: not deleting" in said.err and "expireNodestConn is report-only" in said.err


def test_reap_refuses_when_the_sysctl_cannot_be_set(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    access, fake, _ = live(tmp_path, writable=False)
    assert main(["reap", "--once", *OFFLINE], node_access=access) == 1
    assert fake.deleted == []
    assert "refused" in capsys.readouterr().out


def test_module_entry_point() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ipvs_reaper",
            "scan",
            *OFFLINE,
            "--ipvs-table",
            "examples/ip_vs.txt",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["node"] == "node-a"
    assert ipaddress.ip_address("10.96.12.7")
