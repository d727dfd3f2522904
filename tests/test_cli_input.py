"""Bad input from a person at a terminal: every case is a one-line message naming the file, field or line,
with exit 2, never a traceback; and the table and JSON say what is actually known."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ipvs_reaper.cli import NodeAccess, main
from ipvs_reaper.ipvs.fake import FakeIpvs
from ipvs_reaper.ipvs.procfs import parse_proc_ip_vs
from ipvs_reaper.kernel.sysctl import FakeSysctls
from tests.agent.harness import kubeconfig
from tests.builders import endpoint_slice, node, port, service

ROOT = Path(__file__).resolve().parent.parent
TABLE = "examples/ip_vs.txt"
OFFLINE = ["--node-name", "node-a", "--cluster-state", "examples/cluster.json", "--ipvs-table", TABLE]
BINARY = b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00"


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("COLUMNS", raising=False)


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def scan(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["scan", *argv, "-o", "json"]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def cluster_file(tmp_path: Path, items: list[dict[str, Any]]) -> str:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"kind": "List", "items": items}))
    return str(path)


# --- one Service cannot stop or widen the reaper ----------------------------------------------------------


def test_a_huge_annotation_number_keeps_only_its_service(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    document = json.loads((ROOT / "examples" / "cluster.json").read_text())
    for item in document["items"]:
        if item["kind"] == "Service" and item["metadata"]["name"] == "api":
            item["metadata"].setdefault("annotations", {})["ipvs-reaper.io/policy"] = json.dumps(
                {"gone": {"maxWaitSeconds": 99999999999999}}
            )
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(document))
    plain = {(r["virtual"], r["real"]): r for r in scan(capsys, *OFFLINE)["realServers"]}
    rows = scan(capsys, "--node-name", "node-a", "--cluster-state", str(path), "--ipvs-table", TABLE)
    for row in rows["realServers"]:
        if row["service"] == "shop/api":
            assert row["decision"] == "keep"
            assert (
                "bad annotation on shop/api: line 1: gone.maxWaitSeconds: expected a whole number"
                in row["reason"]
            )
        else:
            assert row == plain[row["virtual"], row["real"]]


def test_a_huge_config_number_is_refused_with_its_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("policy:\n  gone:\n    maxWaitSeconds: 99999999999999\n")
    err = fails(capsys, ["scan", *OFFLINE, "--config", str(config)])
    assert err == (
        f"ipvs-reaper: error: {config}: line 3: policy.gone.maxWaitSeconds: "
        "expected a whole number of seconds from 0 to 31536000, got 99999999999999"
    )


# --- files that are not what they should be ---------------------------------------------------------------


@pytest.mark.parametrize(
    "flag", ["--cluster-state", "--ipvs-table", "--config", "--sysctls", "--node-addresses"]
)
def test_binary_content_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(BINARY)
    argv = {"--cluster-state": "examples/cluster.json", "--ipvs-table": TABLE, flag: str(junk)}
    err = fails(capsys, ["scan", "--node-name", "node-a", *[x for kv in argv.items() for x in kv]])
    assert err.startswith(f"ipvs-reaper: error: {junk}: ")
    assert "not text" in err or "not valid YAML" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [\n", "not a kubeconfig: not valid YAML: line 2:"),
        ("- 1\n", "not a kubeconfig: expected a mapping"),
        ("apiVersion: v1\nclusters: 5\ncurrent-context: x\n", "not a usable kubeconfig"),
    ],
)
def test_a_bad_kubeconfig_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    err = fails(capsys, ["scan", "--node-name", "n", "--ipvs-table", TABLE, "--kubeconfig", str(path)])
    assert err.startswith(f"ipvs-reaper: error: {path}: {message}")


def test_a_missing_kubeconfig_names_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(
        capsys, ["scan", "--node-name", "n", "--ipvs-table", TABLE, "--kubeconfig", "/nonexistent/kc"]
    )
    assert err == "ipvs-reaper: error: /nonexistent/kc: No such file or directory"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "line 1: empty: a copy of /proc/net/ip_vs starts with 'IP Virtual Server version'"),
        ((ROOT / "tests/fixtures/ipvsadm-Ln.txt").read_text(), "looks like `ipvsadm` output"),
    ],
)
def test_a_table_file_that_is_not_proc_ip_vs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.txt"
    path.write_text(text)
    err = fails(
        capsys,
        ["scan", "--node-name", "n", "--cluster-state", "examples/cluster.json", "--ipvs-table", str(path)],
    )
    assert message in err and str(path) in err


def test_sysctls_with_nothing_recognisable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("net.ipv4.ip_forward = 1\n")
    err = fails(capsys, ["scan", *OFFLINE, "--sysctls", str(path)])
    assert f"{path}: none of net.ipv4.vs.conn_reuse_mode" in err


def test_conn_reuse_mode_1_alone_means_not_exposed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "s.txt"
    path.write_text("net.ipv4.vs.conn_reuse_mode = 1\n")
    assert scan(capsys, *OFFLINE, "--sysctls", str(path))["kernel"]["exposure"] == "not-exposed"


def test_standard_input_for_one_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's ssh workflow: `ssh node cat /proc/net/ip_vs | ipvs-reaper scan --ipvs-table - ...`
    done = subprocess.run(
        [sys.executable, "-m", "ipvs_reaper", "scan", "--node-name", "node-a", "--cluster-state",
         "examples/cluster.json", "--ipvs-table", "-", "-o", "json"],
        input=(ROOT / TABLE).read_bytes(), capture_output=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["summary"]["reap"] == 6
    err = fails(capsys, ["scan", "--node-name", "n", "--cluster-state", "-", "--ipvs-table", "-"])
    assert "only one input can be read from standard input, not --cluster-state and --ipvs-table" in err


# --- the config's own text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "polcy: {}\n",
            "c.yaml: line 1: polcy: unknown key (expected one of: breaker, excludeCIDRs, expireNodestConn",
        ),
        (
            "policy:\n  gone: {reap: idle}\n  gone: {reap: always}\n",
            "c.yaml: not valid YAML: line 3: duplicate key 'gone' (first on line 2)",
        ),
        (
            "policy:\n  gone:\n   - reap\n  bad\n",
            "c.yaml: not valid YAML: line 5: while scanning a simple key",
        ),
        ("breaker:\n  maxShare: .nan\n", "c.yaml: line 2: breaker.maxShare: expected a number in (0, 1]"),
        ("expireNodestConn: [1]\n", "c.yaml: line 1: expireNodestConn: expected one of enforce"),
    ],
)
def test_config_errors_name_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    err = fails(capsys, ["scan", *OFFLINE, "--config", str(config)])
    assert err.startswith(f"ipvs-reaper: error: {tmp_path}/{message}")


# --- saying what is known ---------------------------------------------------------------------------------


def unjudged(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    """scan of a view it cannot judge: the report still, and exit 1 with the reason."""
    assert main(["scan", *argv, "-o", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("ipvs-reaper: cannot judge: cluster state unusable: ")
    document: dict[str, Any] = json.loads(captured.out)
    return document


def test_an_export_without_services_is_a_refusal_and_rows_say_unknown(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    slices_only = cluster_file(
        tmp_path, [endpoint_slice("a", "b-1", "b", [port(80)], []), node("node-a", "192.168.49.2")]
    )
    document = unjudged(
        capsys, "--node-name", "node-a", "--cluster-state", slices_only, "--ipvs-table", TABLE
    )
    assert document["refusal"].startswith("cluster state unusable: the cluster state has no Service objects")
    assert {row["endpointState"] for row in document["realServers"]} == {"unknown"}
    assert {row["decision"] for row in document["realServers"]} == {"keep"}
    assert not any("maps to no Service" in row["reason"] for row in document["realServers"])
    assert main(["scan", "--node-name", "node-a", "--cluster-state", slices_only, "--ipvs-table", TABLE]) == 1
    assert "REFUSED:   cluster state unusable" in capsys.readouterr().out


def test_an_export_without_slices_does_not_say_gone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    services_only = cluster_file(tmp_path, [service("shop", "web", ["10.96.12.7"], [port(443)])])
    document = unjudged(
        capsys, "--node-name", "node-a", "--cluster-state", services_only, "--ipvs-table", TABLE
    )
    assert "no EndpointSlice objects" in document["refusal"]
    assert {row["endpointState"] for row in document["realServers"]} == {"unknown"}


def test_a_node_missing_from_the_export_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "scan",
                "--node-name",
                "node-z",
                "--cluster-state",
                "examples/cluster.json",
                "--ipvs-table",
                TABLE,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "warning: no Node named 'node-z' in the cluster state" in captured.err
    assert "WARNING:   no Node named 'node-z'" in captured.out


# --- NodePorts on every local address, as kube-proxy builds them ------------------------------------------


def _cni_table(tmp_path: Path) -> str:
    # NodePort 31234 of shop/web on cni0's 10.244.0.1 too: its gone endpoint 10.244.4.9 stays at weight 0.
    text = (
        ROOT / TABLE
    ).read_text() + "TCP  0AF40001:7A02 rr \n  -> 0AF40409:20FB      Masq    0      0          2\n"
    path = tmp_path / "ip_vs.txt"
    path.write_text(text)
    return str(path)


def test_node_ports_on_local_addresses_are_mapped_offline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    table = _cni_table(tmp_path)
    base = ["--node-name", "node-a", "--cluster-state", "examples/cluster.json", "--ipvs-table", table]
    row = {r["virtual"]: r for r in scan(capsys, *base)["realServers"]}["10.244.0.1:31234"]
    assert (row["endpointState"], row["decision"]) == ("unmapped", "keep")
    addresses = tmp_path / "ip.json"
    addresses.write_text(json.dumps([
        {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1"}]},
        {"ifname": "eth0", "addr_info": [{"family": "inet", "local": "192.168.49.2"},
                                         {"family": "inet6", "local": "fe80::1"}]},
        {"ifname": "cni0", "addr_info": [{"family": "inet", "local": "10.244.0.1"}, {}]},
        {"ifname": "kube-ipvs0", "addr_info": [{"family": "inet", "local": "10.96.12.7"}]},
    ]))  # fmt: skip
    rows = scan(capsys, *base, "--node-addresses", str(addresses))["realServers"]
    row = {r["virtual"]: r for r in rows}["10.244.0.1:31234"]
    assert (row["service"], row["endpointState"], row["decision"]) == ("shop/web", "gone", "reap")


def test_node_port_addresses_in_the_config_narrow_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # kube-proxy run with --nodeport-addresses 192.168.0.0/16 leaves cni0's address alone: so must we.
    config = tmp_path / "c.yaml"
    config.write_text("nodePortAddresses: [192.168.0.0/16]\n")
    addresses = tmp_path / "addresses.txt"
    addresses.write_text("192.168.49.2 10.244.0.1\n")
    table = _cni_table(tmp_path)
    argv = ["--node-name", "node-a", "--cluster-state", "examples/cluster.json", "--ipvs-table", table]
    rows = {
        r["virtual"]: r
        for r in scan(capsys, *argv, "--node-addresses", str(addresses), "--config", str(config))[
            "realServers"
        ]
    }
    assert (rows["10.244.0.1:31234"]["endpointState"], rows["10.244.0.1:31234"]["decision"]) == (
        "unmapped",
        "keep",
    )
    assert rows["192.168.49.2:31234"]["decision"] == "reap"


def test_node_ports_on_local_addresses_are_reaped_live(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import ipaddress

    fake = FakeIpvs(parse_proc_ip_vs(Path(_cni_table(tmp_path)).read_text()))
    access = NodeAccess(
        fake,
        FakeSysctls({"conn_reuse_mode": 0, "expire_nodest_conn": 1}),
        proc_kernel=tmp_path,
        local_addresses=lambda: (ipaddress.ip_address("10.244.0.1"),),
    )
    assert (
        main(["reap", "--once", "--node-name", "node-a", "--cluster-state", "examples/cluster.json"], access)
        == 0
    )
    assert "10.244.0.1:31234 -> 10.244.4.9" in {f"{k.virtual} -> {k.address}" for k in fake.deleted}


# --- help, version, output ----------------------------------------------------------------------------------


def test_version_and_help_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("ipvs-reaper 0.")
    with pytest.raises(SystemExit):
        main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    assert "`run` is the node agent" in top and "{scan,reap,run,doctor,health}" in top
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in (
        "(default: 60.0)",
        "(default: 300.0)",
        "0: none (a watch resumes from its last version",
        "(default: 0.0.0.0:10373)",
        "(default: info)",
        "(default: $NODE_NAME, then the hostname)",
    ):
        assert shown in text, shown


def test_the_table_fits_the_terminal_and_wide_cuts_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "140")
    assert main(["scan", *OFFLINE]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) <= 140 for line in lines)
    rows = [line for line in lines if line.startswith(("TCP", "UDP"))]
    assert any(line.endswith("…") for line in rows)
    assert main(["scan", *OFFLINE, "-o", "wide"]) == 0
    wide = capsys.readouterr().out
    assert "FORWARD" in wide and "REAP-AFTER" in wide and "…" not in wide
    assert main(["scan", *OFFLINE, "--no-headers"]) == 0
    bare = capsys.readouterr().out.strip().splitlines()
    assert len(bare) == 10 and not any(line.startswith(("NODE:", "PROTOCOL")) for line in bare)


def test_a_closed_pipe_is_not_a_traceback() -> None:
    done = subprocess.run(
        f"{sys.executable} -m ipvs_reaper scan {' '.join(OFFLINE)} --all | head -1",
        shell=True, capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.stdout.startswith("NODE:")
    assert done.stderr == ""


# --- the agent's command line -------------------------------------------------------------------------------


def test_run_on_a_port_in_use_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        config = kubeconfig(tmp_path, "http://127.0.0.1:9")
        access = NodeAccess(FakeIpvs(), FakeSysctls(), local_addresses=lambda: ())
        argv = ["run", "--node-name", "n", "--kubeconfig", config, "--listen", f"127.0.0.1:{taken}"]
        assert main(argv, access) == 1
    err = capsys.readouterr().err
    assert f"ipvs-reaper: failed: --listen 127.0.0.1:{taken}: Address already in use" in err
    assert "Traceback" not in err


def test_run_stops_on_a_signal_and_at_once_on_a_second(tmp_path: Path) -> None:
    # Nothing answers at this address: the agent waits for its first listing, as during an API outage.
    config = kubeconfig(tmp_path, "http://127.0.0.1:9")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{probe.getsockname()[1]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "ipvs_reaper", "run", "--node-name", "n", "--kubeconfig", config,
         "--listen", listen],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stderr is not None
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if "listing failed" in line:
            break
    process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=30)
    text = "".join(lines) + rest
    assert "InvalidStateError" not in text and "Traceback" not in text, text
    assert "SIGTERM received: stopping" in text, text
    # The first stopped it gracefully; the second either found it still stopping (exit at once) or after
    # its loop had closed, when the default disposition ends it.
    assert process.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM)


def test_unreadable_node_addresses_are_a_warning_not_a_failure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from ipvs_reaper.kernel.addresses import AddressError

    def broken() -> tuple[Any, ...]:
        raise AddressError("reading the node's addresses over netlink: [Errno 1] Operation not permitted")

    fake = FakeIpvs(parse_proc_ip_vs((ROOT / TABLE).read_text()))
    access = NodeAccess(
        fake, FakeSysctls({"conn_reuse_mode": 1}), proc_kernel=tmp_path, local_addresses=broken
    )
    assert main(["scan", "--node-name", "node-a", "--cluster-state", "examples/cluster.json"], access) == 0
    captured = capsys.readouterr()
    assert "Operation not permitted: NodePorts map only to the Node object's addresses" in captured.err
    assert "6 to reap" in captured.out


# --- what the view itself says is missing -----------------------------------------------------------------


def test_an_export_of_one_namespaces_slices_keeps_the_others_and_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # `kubectl get svc -A` beside `kubectl get endpointslices -n shop`: kube-system's slices are missing.
    web = service("shop", "web", ["10.96.0.10"], [port(80)], selector={"app": "web"})
    dns = service("kube-system", "dns", ["10.96.0.53"], [port(53, protocol="UDP")], selector={"app": "dns"})
    items = [
        web,
        dns,
        endpoint_slice("shop", "web-1", "web", [port(8080)], []),
        node("node-a", "192.168.49.2"),
    ]
    table = tmp_path / "ip_vs"
    table.write_text(
        "IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
        "TCP  0A60000A:0050 rr\n"
        "  -> 0AF40105:1F90      Masq    0      0          0\n"
        "UDP  0A600035:0035 rr\n"
        "  -> 0AF40205:0035      Masq    0      0          0\n"
    )
    document = scan(capsys, "--node-name", "node-a", "--cluster-state", cluster_file(tmp_path, items),
                    "--ipvs-table", str(table), "--policy", "immediate")  # fmt: skip
    decisions = {row["service"]: (row["decision"], row["endpointState"]) for row in document["realServers"]}
    assert decisions == {"shop/web": ("reap", "gone"), "kube-system/dns": ("keep", "unknown")}
    assert document["warnings"] == [
        "1 Service(s) with a selector have no EndpointSlice in the cluster state, so their endpoints are "
        "unknown and their real servers kept (an export of some namespaces' slices?): kube-system/dns"
    ]
