"""The rollout lab's arithmetic and plan (bench/rollout/summary.py, bench/rollout_lab.py), on hand-made
records: what docs/rollout.md reports must mean what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.rollout.arm import ARMS, Timing
from bench.rollout.summary import client_summary, reused_ports, weight_zero
from bench.rollout_lab import plan, sysctls_for
from tests.vm.variant import Variant


def record(
    at: float, outcome: str = "ok", port: int | None = 40000, connect: float | None = 0.01
) -> list[object]:
    ok = outcome == "ok"
    return [at, connect, 0.02, outcome, "web-1-0" if ok else None, port if ok else None, port]


def test_a_port_counts_as_reused_only_within_ipvs_time_wait() -> None:
    records = [record(0.0, port=40000), record(1.0, port=40002), record(100.0, port=40000),
               record(221.0, port=40000), record(222.0, port=40002)]  # fmt: skip
    # 100 s after its last use: reused; 121 s after: its entry had expired; 40002 after 221 s: not reused.
    assert reused_ports(records) == (1, 5)


def test_failures_are_counted_by_kind_and_timed_from_the_end_of_the_rollout() -> None:
    records = [record(5.0), record(12.0, "refused", connect=None), record(30.0, "timeout", connect=None),
               record(31.0, "http-502"), record(40.0)]  # fmt: skip
    summary = client_summary(records, rollout_ended=20.0, window_end=60.0)
    assert summary["requests"] == 5 and summary["failed"] == 3
    assert summary["outcomes"] == {"http-502": 1, "ok": 2, "refused": 1, "timeout": 1}
    assert summary["failing_after"] == 11.0  # the last failure started 11 s after the last old pod went
    assert summary["failing_at_end"] is False  # 29 s before the window closed
    steady = [record(at, "refused", connect=None) for at in (41.0, 45.0, 50.0, 55.0, 59.0)]
    assert client_summary(records + steady, rollout_ended=20.0, window_end=60.0)["failing_at_end"] is True
    assert (
        client_summary(records + steady[1:], rollout_ended=20.0, window_end=60.0)["failing_at_end"] is False
    )
    assert client_summary(records[:2], rollout_ended=20.0, window_end=15.0)["failing_after"] == 0.0


def test_weight_zero_spans_end_when_the_real_server_goes_or_at_the_end() -> None:
    samples = [
        [0.0, {"a": [1, 0, 0], "b": [1, 0, 0]}],
        [1.0, {"a": [0, 0, 3], "b": [1, 0, 0]}],
        [5.0, {"b": [0, 1, 0]}],  # a deleted after 4 s at weight 0
        [6.0, {"b": [0, 0, 9]}],
    ]
    assert weight_zero(samples, end=20.0) == {"left_at_end": 1, "longest": 15.0}  # b: 5 s to the end


def test_the_plan_runs_every_arm_of_a_setting_side_by_side_with_the_kernels_own_kube_proxy_settings() -> None:
    batches = plan(Variant.PREFIX, ["kube-proxy", "0,1"], list(ARMS), 2, Timing(), Path("/nginx"))
    assert len(batches) == 4 and all(len(batch) == len(ARMS) for batch in batches)
    first = batches[0][0]["spec"]
    assert isinstance(first, dict)
    assert first["sysctls"] == {"conntrack": 1, "expire_nodest_conn": 1, "expire_quiescent_template": 1,
                                "conn_reuse_mode": 0}  # fmt: skip
    assert sysctls_for("kube-proxy", Variant.DEBIAN_6_1)["conn_reuse_mode"] == 1  # 5.9 and later: left alone
    assert sysctls_for("0,1", Variant.DEBIAN_5_10) == {"conn_reuse_mode": 0, "expire_nodest_conn": 1}
    names = [item["name"] for batch in batches for item in batch]
    assert len(set(names)) == len(names)


def test_the_lab_command_shows_its_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.rollout_lab", "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "(default: 2)" in done.stdout and "(default: 130.0)" in done.stdout
