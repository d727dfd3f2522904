"""`doctor --probe-kernel` on the real kernel: it agrees with the matrix this tier measures with its own lab
(test_reuse_matrix.py), on Debian's IPVS and on the pre-fix one, says whether kube-proxy's own settings are
exposed there, and leaves the node as it found it, even when killed half-way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipvs_reaper.cli import main
from tests.kernel.expected import DEAD, KUBE_PROXY_SETTINGS, MATRIX, kernel_before_5_9
from tests.kernel.lab import Lab, kube_proxy_sysctls, sh
from tests.vm.variant import Variant

ROOT = Path(__file__).resolve().parents[2]


def node_state(lab: Lab) -> tuple[object, ...]:
    return (
        sh("ip", "-o", "link", "show"),
        sh("ip", "-o", "addr", "show"),
        sh("ip", "netns", "list"),
        lab.ipvsadm("-Ln"),
        lab.read_sysctl("conn_reuse_mode"),
        lab.read_sysctl("expire_nodest_conn"),
    )


@pytest.mark.kernels(*Variant)
def test_probe_agrees_with_the_matrix_and_changes_nothing(
    lab: Lab, capsys: pytest.CaptureFixture[str], variant: Variant
) -> None:
    # The node runs what kube-proxy sets for this kernel.
    for name, value in kube_proxy_sysctls(kernel_before_5_9(variant)).items():
        lab.sysctl(name, value)
    before = node_state(lab)
    capsys.readouterr()
    code = main(["doctor", "--probe-kernel", "-o", "json"])
    document = json.loads(capsys.readouterr().out)
    measured = {
        (row["connReuseMode"], row["expireNodestConn"]): (row["weightZero"], row["deleted"])
        for row in document["rows"]
    }
    assert measured == {key: (str(a), str(b)) for key, (a, b) in MATRIX[variant].items()}
    # Exposed at kube-proxy's settings on the pre-fix IPVS only; the exit code gates a script.
    exposed = KUBE_PROXY_SETTINGS[variant][0] == DEAD
    assert document["exposedAtNodeSettings"] is exposed and code == (3 if exposed else 0)
    # `scan`'s verdict from the version agrees where the version can tell; the pre-fix module is built out
    # of tree, so there it cannot (and says so).
    if variant is Variant.PREFIX:
        assert document["versionVerdict"]["exposure"] == "unknown" and document["versionAgrees"] is None
        assert "O" in document["kernel"]["ipVsTaint"]
    else:
        assert document["versionAgrees"] is True, document["versionVerdict"]
    assert node_state(lab) == before


def holds_namespace(pid: int) -> bool:
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(descriptor).startswith("net:["):
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def test_killed_probe_leaves_nothing_behind(lab: Lab) -> None:
    before = node_state(lab)
    probe = subprocess.Popen(
        [sys.executable, "-m", "ipvs_reaper", "doctor", "--probe-kernel"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    # Wait until it holds a namespace of its own (a descriptor), then kill it without warning.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and probe.poll() is None and not holds_namespace(probe.pid):
        time.sleep(0.05)
    assert probe.poll() is None, "the probe ended before it could be killed mid-way"
    time.sleep(1.0)  # well inside a row: interfaces, IPVS service and sockets exist
    os.kill(probe.pid, signal.SIGKILL)
    probe.wait(timeout=30)
    # Namespaces are torn down asynchronously after the last reference goes: wait for it, not a guessed time.
    deadline = time.monotonic() + 30
    while node_state(lab) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert node_state(lab) == before
