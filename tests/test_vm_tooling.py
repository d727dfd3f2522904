"""The kernel tier's own plumbing, on the host: a VM that fails must fail the tests, never skip them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.vm import machine
from tests.vm.errors import VmError
from tests.vm.guest_report import guest_failure
from tests.vm.image import VmImage
from tests.vm.machine import VmRun, run_in_vm
from tests.vm.variant import DEFAULT

RUN = VmRun(
    exit_code=1, seconds=1.0, console="", job_log="collected 0 items\nImportError: boom", results=Path()
)
IMAGE = VmImage(
    Path("/nonexistent/vmlinuz"), Path("/nonexistent/initramfs"), "linux-image-x", "1", "6.1.0-x", DEFAULT
)


def phase(when: str, outcome: str, longrepr: str = "") -> dict[str, object]:
    return {
        "nodeid": "t",
        "when": when,
        "outcome": outcome,
        "duration": 0.1,
        "longrepr": longrepr,
        "sections": [],
    }


def test_a_passing_guest_test_passes() -> None:
    phases = [phase("setup", "passed"), phase("call", "passed"), phase("teardown", "passed")]
    assert guest_failure(phases, RUN) is None


@pytest.mark.parametrize(
    ("phases", "says"),
    [
        ([], "did not run in the VM (guest exit 1)"),
        ([phase("setup", "skipped", "no ipvsadm")], "skipped in the VM, which this tier does not allow"),
        (
            [phase("setup", "passed"), phase("call", "failed", "assert 1 == 2")],
            "failed in the VM during call",
        ),
        (
            [phase("setup", "passed"), phase("call", "passed"), phase("teardown", "failed", "netns busy")],
            "during teardown",
        ),
        ([phase("setup", "passed")], "no passing call phase"),
    ],
)
def test_anything_but_a_pass_is_a_failure(phases: list[dict[str, object]], says: str) -> None:
    failure = guest_failure(phases, RUN)
    assert failure is not None and says in failure
    if not phases:
        assert "ImportError: boom" in failure, "the guest's own output explains why nothing ran"


def fake_qemu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "qemu"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_a_missing_qemu_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine, "QEMU", str(tmp_path / "no-such-qemu"))
    with pytest.raises(VmError, match="qemu-system-x86"):
        run_in_vm(IMAGE, ["true"], cwd=tmp_path, results=tmp_path / "r")


def test_a_guest_that_never_ran_the_job_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir()
    (results / "console.log").write_text("ipvs-vm: FAILED: modprobe ip_vs\n")
    # A console log left from an earlier run is cleared first; this qemu writes a fresh one and powers off.
    qemu = fake_qemu(tmp_path, f"echo 'ipvs-vm: FAILED: mount host root' > {results}/console.log\nexit 0\n")
    monkeypatch.setattr(machine, "QEMU", qemu)
    with pytest.raises(VmError, match="without running the job") as raised:
        run_in_vm(IMAGE, ["true"], cwd=tmp_path, results=results)
    assert "mount host root" in str(raised.value) and "modprobe" not in str(raised.value)


def test_a_hung_guest_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(machine, "QEMU", fake_qemu(tmp_path, "sleep 30\n"))
    with pytest.raises(VmError, match="did not power off"):
        run_in_vm(IMAGE, ["true"], cwd=tmp_path, results=tmp_path / "r", timeout_seconds=0.5)


def test_the_job_and_its_exit_code_travel_through_the_results_share(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = tmp_path / "r"
    # Plays the guest: runs the job script the host wrote, the way init.sh does, minus the chroot.
    qemu = fake_qemu(
        tmp_path,
        f"sed -e 's#/run/ipvs-vm#{results}#g' -e 's#/run/scratch#{results}/scratch#g' -e '/^ip link/d'"
        f" {results}/job.sh > {results}/local.sh\n"
        f"sh {results}/local.sh > {results}/job.log 2>&1\n"
        f"echo $? > {results}/exit-code\n",
    )
    monkeypatch.setattr(machine, "QEMU", qemu)
    run = run_in_vm(
        IMAGE, ["sh", "-c", "echo \"$GREETING in $(pwd)\"; exit 3"], cwd=tmp_path, results=results,
        env={"GREETING": "it's me"},
    )  # fmt: skip
    assert run.exit_code == 3
    assert run.job_log.strip() == f"it's me in {tmp_path}"
