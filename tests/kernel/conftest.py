"""The real-kernel tier.

On the host (no IPVS) every test here is replaced by a proxy per kernel variant it runs on
(tests/vm/variant.py): Debian 6.1 by default, or those a `@pytest.mark.kernels(...)` names (the pre-fix
IPVS, Debian's 5.10 and 6.12); a proxy's name ends in `@<variant>` but on Debian 6.1. The first proxy of a
variant to run boots one throwaway VM for that variant and runs all its selected tests in it with pytest;
each proxy then reports its own test's outcome from the guest, with the guest's failure text. A skip inside
the guest, a test that did not run, or a VM that did not boot are failures: this tier never skips silently.

In the guest (IPVS_REAPER_GUEST=1) the tests run for real, and a small reporter writes each result as a
JSON line to the results share. The `variant` fixture says which IPVS the guest runs, checked against the
module actually loaded before any test."""

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
from tests.vm.variant import DEFAULT, ENVIRONMENT, Variant, check_loaded_module
from tests.vm.variant import current as current_variant

IN_GUEST = os.environ.get("IPVS_REAPER_GUEST") == "1"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GUEST_REPORT = Path("/run/ipvs-vm") / REPORT_NAME


def in_tier(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(HERE)


def variants_of(item: pytest.Item) -> list[Variant]:
    marker = item.get_closest_marker("kernels")
    if marker is None:
        return [DEFAULT]
    return [Variant(name) for name in marker.args]


# --- guest side ---------------------------------------------------------------------------------------------

if IN_GUEST:
    from tests.kernel.lab import Lab, prepare_node

    @pytest.fixture(scope="session")
    def variant() -> Variant:
        return current_variant()

    @pytest.fixture(scope="session", autouse=True)
    def node(variant: Variant) -> None:
        check_loaded_module(variant)
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
    variant: Variant
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
            self.run = run_in_vm(
                ensure_image(variant=self.variant),
                command,
                cwd=ROOT,
                results=results,
                env={ENVIRONMENT: self.variant.value, **forwarded_environment()},
            )
        except VmError as error:
            self.error = str(error)
            return
        self.results = read_guest_report(results / REPORT_NAME)


def forwarded_environment() -> dict[str, str]:
    """The host's settings for the guest's tests (the differential test's count and first seed)."""
    return {name: value for name, value in os.environ.items() if name.startswith("IPVS_REAPER_DIFFERENTIAL_")}


GUEST_SESSIONS = pytest.StashKey[dict[Variant, GuestSession]]()


class GuestFailure(Exception):
    pass


class GuestProxy(pytest.Item):
    """Stands on the host for one test that runs in the VM, on one variant."""

    def __init__(self, *, variant: Variant, guest_nodeid: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = variant
        self.guest_nodeid = guest_nodeid

    def runtest(self) -> None:
        session = self.config.stash[GUEST_SESSIONS][self.variant]
        session.ensure_ran()
        if session.error is not None:
            raise GuestFailure(f"the kernel VM ({self.variant.title}) failed: {session.error}")
        assert session.run is not None
        phases = session.results.get(self.guest_nodeid, [])
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
        return self.path, None, f"[in the VM, {self.variant.title}] {self.name}"


def pytest_itemcollected(item: pytest.Item) -> None:
    # At collection, so that `-m "not kernel"` deselects these before any proxy exists.
    if in_tier(item):
        item.add_marker("kernel")


if not IN_GUEST:
    # First, before -k/-m deselection, so that a proxy's own name (`...@pre-fix`) can be selected.
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        replaced: list[pytest.Item] = []
        for item in items:
            if not in_tier(item):
                replaced.append(item)
                continue
            assert item.parent is not None
            for variant in variants_of(item):
                suffix = "" if variant is DEFAULT else f"@{variant.value}"
                proxy = GuestProxy.from_parent(
                    item.parent, name=item.name + suffix, variant=variant, guest_nodeid=item.nodeid
                )
                proxy.own_markers.extend(item.own_markers)
                proxy.keywords.update(item.keywords)
                replaced.append(proxy)
        items[:] = replaced

    # After every deselection: each variant's VM runs exactly the tests still selected for it.
    def pytest_collection_finish(session: pytest.Session) -> None:
        sessions = {variant: GuestSession(variant, []) for variant in Variant}
        for item in session.items:
            if isinstance(item, GuestProxy):
                sessions[item.variant].nodeids.append(item.guest_nodeid)
        session.config.stash[GUEST_SESSIONS] = sessions
