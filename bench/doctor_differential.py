"""The doctor against the kernel on many generated rule sets: tests/kernel/test_doctor_differential.py, run
in the throwaway VM with more seeds than the tier's bounded run.

Run from the repository root (boots the VM, about 20x slower than the host; about 3 s a rule set there):

    .venv/bin/python -m bench.doctor_differential --count 500 --seed 1000

Prints the agreement figure (rule sets, packets, packets a rule captured, agreements, disagreements by kind)
and every rule set that disagreed, with its rules, what the kernel did and what the doctor said. The full
record is in the VM's results folder (differential.json), whose path is printed last.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.image import ensure_image
from tests.vm.machine import run_in_vm
from tests.vm.variant import DEFAULT, ENVIRONMENT, Variant

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500, help="rule sets (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1000, help="the first seed (default: %(default)s)")
    parser.add_argument("--variant", type=Variant, choices=list(Variant), default=DEFAULT)
    parser.add_argument(
        "--all", action="store_true", help="record every rule set, not only those that disagree"
    )
    options = parser.parse_args()
    results = Path(tempfile.mkdtemp(prefix="ipvs-reaper-differential-"))
    env = {
        ENVIRONMENT: options.variant.value,
        "IPVS_REAPER_DIFFERENTIAL_COUNT": str(options.count),
        "IPVS_REAPER_DIFFERENTIAL_SEED": str(options.seed),
    }
    if options.all:
        env["IPVS_REAPER_DIFFERENTIAL_ALL"] = "1"
    command = [
        str(ROOT / ".venv" / "bin" / "python"),
        "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/kernel/test_doctor_differential.py",
    ]  # fmt: skip
    try:
        run = run_in_vm(
            ensure_image(variant=options.variant),
            command,
            cwd=ROOT,
            results=results,
            env=env,
            timeout_seconds=max(1800.0, 60 + 10.0 * options.count),
        )
    except VmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    record_path = results / "differential.json"
    if not record_path.exists():
        sys.stdout.write(run.job_log)
        print(f"error: the run wrote no record (exit {run.exit_code}); results in {results}", file=sys.stderr)
        return 1
    record = json.loads(record_path.read_text())
    for text in record["failing"]:
        print(text, end="\n\n")
    print(record["summary"])
    print(f"[vm] {run.seconds:.0f} s in all, exit {run.exit_code}; the record: {record_path}")
    return 0 if not record["failing"] else 3


if __name__ == "__main__":
    sys.exit(main())
