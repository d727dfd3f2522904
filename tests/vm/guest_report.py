"""The guest's per-test results, one JSON line per phase, and how the host reads them.

pytest's own junit XML would do, but it names tests by class and name; these lines carry the exact node id the
host's proxy has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.vm.machine import VmRun

REPORT_NAME = "guest-report.jsonl"

Phase = dict[str, Any]


def append_report_line(path: Path, report: pytest.TestReport) -> None:
    line = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": report.duration,
        "longrepr": str(report.longrepr) if report.longrepr else "",
        "sections": [[title, text] for title, text in report.sections],
    }
    with path.open("a") as sink:
        sink.write(json.dumps(line) + "\n")


def read_guest_report(path: Path) -> dict[str, list[Phase]]:
    results: dict[str, list[Phase]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        results.setdefault(entry["nodeid"], []).append(entry)
    return results


def guest_failure(phases: list[Phase], run: VmRun) -> str | None:
    """Why the guest's report of one test is not a pass, or None when it is."""
    if not phases:
        tail = "\n".join(run.job_log.splitlines()[-60:])
        return f"the test did not run in the VM (guest exit {run.exit_code}); guest output:\n{tail}"
    for phase in phases:
        if phase["outcome"] == "failed":
            return f"failed in the VM during {phase['when']}:\n{phase['longrepr']}"
        if phase["outcome"] == "skipped":
            return f"skipped in the VM, which this tier does not allow: {phase['longrepr']}"
    if not any(phase["when"] == "call" and phase["outcome"] == "passed" for phase in phases):
        return f"no passing call phase reported from the VM: {phases}"
    return None
