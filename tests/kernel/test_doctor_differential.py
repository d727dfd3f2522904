"""The doctor against the kernel, on generated rule sets (tests/netfilter/grammar.py, the harness in
tests/kernel/differential.py): for each, every virtual service is connected to from a pod (PREROUTING) and
from the node (OUTPUT), and the doctor's hijack findings must agree with where the kernel sent each one.

A fixed, bounded run in the tier; a longer one, or other seeds, through the environment:
IPVS_REAPER_DIFFERENTIAL_COUNT (rule sets), IPVS_REAPER_DIFFERENTIAL_SEED (the first seed; the others follow).
bench/doctor_differential.py runs many more in the VM."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tests.kernel.differential import Outcome, clear_rules, run_rule_set
from tests.netfilter.grammar import generate

COUNT = int(os.environ.get("IPVS_REAPER_DIFFERENTIAL_COUNT", "60"))
FIRST_SEED = int(os.environ.get("IPVS_REAPER_DIFFERENTIAL_SEED", "0"))
RESULTS = Path("/run/ipvs-vm")


def summary(outcomes: list[Outcome], seconds: float) -> str:
    packets = sum(o.packets for o in outcomes)
    disagreements = sum(len(o.disagreements) for o in outcomes)
    kinds = Counter(d.kind for o in outcomes for d in o.disagreements)
    captured = sum(
        1
        for o in outcomes
        for s in o.rule_set.services
        for hook in ("prerouting", "output")
        if (s.name, hook) in o.observed and o.observed[(s.name, hook)] != f"{s.backend}:{s.port}"
    )
    return (
        f"differential: {len(outcomes)} rule sets (seeds {FIRST_SEED}..{FIRST_SEED + len(outcomes) - 1}), "
        f"{packets} packets ({captured} captured by a rule), {packets - disagreements} agreements, "
        f"{disagreements} disagreements {dict(kinds)}, "
        f"{sum(o.possible_not_taken for o in outcomes)} possible hijacks the kernel did not take, "
        f"{sum(1 for o in outcomes if o.harness)} rule sets the harness could not judge; {seconds:.0f} s"
    )


def test_doctor_agrees_with_the_kernel_on_generated_rule_sets(
    source_ports: Iterator[int], tmp_path: Path
) -> None:
    clear_rules()
    started = time.monotonic()
    outcomes = [
        run_rule_set(generate(seed), source_ports, tmp_path) for seed in range(FIRST_SEED, FIRST_SEED + COUNT)
    ]
    line = summary(outcomes, time.monotonic() - started)
    print(line)
    if RESULTS.is_dir():
        record = {
            "summary": line,
            "failing": [o.text() for o in outcomes if o.disagreements or o.harness],
            "all": [o.text() for o in outcomes] if os.environ.get("IPVS_REAPER_DIFFERENTIAL_ALL") else [],
        }
        (RESULTS / "differential.json").write_text(json.dumps(record, indent=1))
    failing = [o for o in outcomes if o.disagreements or o.harness]
    assert not failing, line + "\n\n" + "\n\n".join(o.text() for o in failing)
