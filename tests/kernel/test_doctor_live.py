"""The hostPort hijack on a real kernel: a pod's portmap-style DNAT takes a client's connection to another
Service's ClusterIP, and `doctor` reports exactly that conflict; with the rules gone, traffic reaches the
Service and `doctor` is clean. Once per backend: iptables-legacy, iptables-nft and native nftables."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvs_reaper.cli import main
from tests import builders
from tests.kernel.cluster import NODE, write_cluster_state
from tests.kernel.lab import Lab, sh
from tests.netfilter.portmap import HostPort, iptables_restore, nft_script

VIP = "10.96.0.20"
MYSQL_A = HostPort("db/mysql-a-0", "10.244.1.5", "tcp", 3306, 3306)


def install(backend: str) -> None:
    if backend == "nftables":
        sh("nft", "-f", "-", stdin=nft_script([MYSQL_A]))
    else:
        sh(f"{backend}-restore", "--noflush", stdin=iptables_restore([MYSQL_A]))


def remove_all() -> None:
    for tool in ("iptables-legacy", "iptables-nft"):
        sh(tool, "-t", "nat", "-F")
        sh(tool, "-t", "nat", "-X")
    sh("nft", "flush", "ruleset")


@pytest.fixture
def clean_rules() -> Iterator[None]:
    remove_all()
    try:
        yield
    finally:
        remove_all()


def doctor(state: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = main(["doctor", "--node-name", NODE, "--cluster-state", str(state), "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("backend", ["iptables-legacy", "iptables-nft", "nftables"])
def test_hostport_rule_takes_another_services_traffic_and_doctor_names_it(
    lab: Lab,
    source_ports: Iterator[int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_rules: None,
    backend: str,
) -> None:
    lab.sysctl("conn_reuse_mode", 1)
    lab.sysctl("expire_nodest_conn", 1)
    lab.cluster_ips(VIP)
    mysql_b = lab.pod("mysql-b-0", "10.244.1.3")
    mysql_a = lab.pod("mysql-a-0", MYSQL_A.pod_ip)
    lab.serve(mysql_b, 3306)
    lab.serve(mysql_a, 3306)
    lab.ipvsadm("-A", "-t", f"{VIP}:3306", "-s", "rr")
    lab.ipvsadm("-a", "-t", f"{VIP}:3306", "-r", f"{mysql_b.address}:3306", "-m", "-w", "1")
    state = write_cluster_state(
        tmp_path / "cluster.json",
        builders.service("db", "mysql-b", [VIP], [builders.port(3306)]),
        builders.endpoint_slice(
            "db", "mysql-b-1", "mysql-b", [builders.port(3306)], [builders.endpoint(mysql_b.address)]
        ),
        builders.pod("db", "mysql-a-0", NODE, MYSQL_A.pod_ip, [{"containerPort": 3306, "hostPort": 3306}]),
    )

    assert lab.client(next(source_ports)).tcp(VIP, 3306).pod == "mysql-b-0"
    code, report = doctor(state, capsys)
    assert code == 0, report
    assert report["findings"] == []

    install(backend)
    # The hijack, reproduced: the ClusterIP of db/mysql-b now answers as mysql-a-0.
    assert lab.client(next(source_ports)).tcp(VIP, 3306).pod == "mysql-a-0"
    code, report = doctor(state, capsys)
    assert code == 3
    findings = report["findings"]
    assert isinstance(findings, list)
    hijacks = [f for f in findings if f["kind"] == "hijack"]
    assert len(hijacks) == 1, findings
    found = hijacks[0]
    assert (found["service"], found["owner"], found["address"]) == (
        "db/mysql-b",
        "db/mysql-a-0",
        f"{VIP}:3306",
    )
    assert found["severity"] == "critical" and found["destination"] == f"{MYSQL_A.pod_ip}:3306"
    assert found["evidence"][0]["source"].startswith(backend)
    assert set(found["evidence"][0]["hooks"]) == {"prerouting", "output"}

    remove_all()
    assert lab.client(next(source_ports)).tcp(VIP, 3306).pod == "mysql-b-0"
    code, report = doctor(state, capsys)
    assert (code, report["findings"]) == (0, [])
