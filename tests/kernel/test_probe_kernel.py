"""`doctor --probe-kernel` on the real kernel: it agrees with the matrix this tier measures with its own lab
(test_reuse_matrix.py), and leaves the node as it found it, even when killed half-way."""

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
from tests.kernel.lab import Lab, sh
from tests.kernel.test_reuse_matrix import EXPECTED

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


def test_probe_agrees_with_the_matrix_and_changes_nothing(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.sysctl("conn_reuse_mode", 0)
    lab.sysctl("expire_nodest_conn", 0)
    before = node_state(lab)
    capsys.readouterr()
    code = main(["doctor", "--probe-kernel", "-o", "json"])
    document = json.loads(capsys.readouterr().out)
    measured = {
        (row["connReuseMode"], row["expireNodestConn"]): (row["weightZero"], row["deleted"])
        for row in document["rows"]
    }
    assert measured == {key: (str(a), str(b)) for key, (a, b) in EXPECTED.items()}
    # This node runs with (0, 0), the exposed row: the exit code gates a script.
    assert document["exposedAtNodeSettings"] is True and code == 3
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
