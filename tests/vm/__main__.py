"""`python -m tests.vm [--results DIR] -- COMMAND...`: run one command inside the throwaway VM.

Used by the VM benchmark and for poking at the kernel by hand; the test tier boots through the same code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.image import ensure_image
from tests.vm.machine import run_in_vm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm")
    parser.add_argument(
        "--results", type=Path, help="writable share for the guest (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("command", nargs="+")
    options = parser.parse_args(argv)
    results = options.results or Path(tempfile.mkdtemp(prefix="ipvs-vm-results-"))
    try:
        image = ensure_image()
        run = run_in_vm(
            image, options.command, cwd=Path.cwd(), results=results, timeout_seconds=options.timeout
        )
    except VmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(run.job_log)
    print(
        f"[vm] kernel {image.release}, {run.seconds:.1f} s, exit {run.exit_code}, results in {results}",
        file=sys.stderr,
    )
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
