"""The real-kernel tier.

On the host (no IPVS) every test here is replaced by a proxy; the first proxy to run boots one throwaway VM
for the whole session and runs all selected tests of this folder in it with pytest; each proxy then reports
its own test's outcome from the guest, with the guest's failure text. A skip inside the guest, a test that
did not run, or a VM that did not boot are failures: this tier never skips silently.

In the guest (IPVS_REAPER_GUEST=1) the tests run for real, and a small reporter writes each result as a
JSON line to the results share."""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.vm.errors import VmError
from tests.vm.guest_report import REPORT_NAME, append_report_line, guest_failure, read_guest_report
from tests.vm.image import ensure_image
from tests.vm.machine import VmRun, run_in_vm

IN_GUEST = os.environ.get("IPVS_REAPER_GUEST") == "1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GUEST_REPORT = Path("/run/ipvs-vm") / REPORT_NAME


def in_tier(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(HERE)


# --- guest side ---------------------------------------------------------------------------------------------

if IN_GUEST:
    from tests.kernel.lab import Lab, prepare_node

    @pytest.fixture(scope="session", autouse=True)
    def node() -> None:
        prepare_node()

    @pytest.fixture
    def lab() -> Iterator[Lab]:
        built = Lab()
        try:
            yield built
        finally:
            built.close()

    @pytest.fixture(scope="session")
    def source_ports() -> Iterator[int]:
        # Connection entries outlive the rules (TIME_WAIT lasts 120 s); each test takes ports no earlier test
        # used, so no entry left by another test can decide where its packets go.
        return itertools.count(40000)

    def pytest_runtest_logreport(report: pytest.TestReport) -> None:
        append_report_line(GUEST_REPORT, report)


# --- host side ----------------------------------------------------------------------------------------------


@dataclass
class GuestSession:
    nodeids: list[str]
    run: VmRun | None = None
    error: str | None = None
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def ensure_ran(self) -> None:
        if self.run is not None or self.error is not None:
            return
        results = Path(tempfile.mkdtemp(prefix="ipvs-reaper-kernel-tier-"))
        python = ROOT / ".venv" / "bin" / "python"
        command = [
            str(python if python.exists() else Path(sys.executable)),
            "-m", "pytest",
            "-p", "no:cacheprovider",
            "-q", "-rA",
            *self.nodeids,
        ]  # fmt: skip
        try:
            self.run = run_in_vm(ensure_image(), command, cwd=ROOT, results=results)
        except VmError as error:
            self.error = str(error)
            return
        self.results = read_guest_report(results / REPORT_NAME)


GUEST_SESSION = pytest.StashKey[GuestSession]()


class GuestFailure(Exception):
    pass


class GuestProxy(pytest.Item):
    """Stands on the host for one test that runs in the VM."""

    def runtest(self) -> None:
        session = self.config.stash[GUEST_SESSION]
        session.ensure_ran()
        if session.error is not None:
            raise GuestFailure(f"the kernel VM failed: {session.error}")
        assert session.run is not None
        phases = session.results.get(self.nodeid, [])
        for phase in phases:
            for title, text in phase["sections"]:
                self.add_report_section(phase["when"], title.rsplit(" ", 1)[-1], text)
        failure = guest_failure(phases, session.run)
        if failure is not None:
            raise GuestFailure(f"{failure}\n(the VM's console.log and job.log: {session.run.results})")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GuestFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"[in the VM] {self.name}"


def pytest_itemcollected(item: pytest.Item) -> None:
    # At collection, so that `-m "not kernel"` deselects these before any proxy exists.
    if in_tier(item):
        item.add_marker("kernel")


if not IN_GUEST:
    # Last, after -k/-m deselection: the VM runs exactly the tests that are still selected.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        proxies: list[str] = []
        for index, item in enumerate(items):
            if not in_tier(item):
                continue
            assert item.parent is not None
            proxy = GuestProxy.from_parent(item.parent, name=item.name)
            proxy.own_markers.extend(item.own_markers)
            proxy.keywords.update(item.keywords)
            items[index] = proxy
            proxies.append(proxy.nodeid)
        config.stash[GUEST_SESSION] = GuestSession(proxies)
