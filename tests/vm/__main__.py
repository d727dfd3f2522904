"""`python -m tests.vm [--results DIR] [--variant 6.1|pre-fix|5.10|6.12] -- COMMAND...`: run one command
inside the throwaway VM, on one of Debian's kernels or on the pre-fix IPVS.

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
from tests.vm.variant import DEFAULT, ENVIRONMENT, Variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vm")
    parser.add_argument(
        "--results", type=Path, help="writable share for the guest (default: a temporary folder)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds (default: %(default)s)")
    parser.add_argument(
        "--variant",
        type=Variant,
        choices=list(Variant),
        default=DEFAULT,
        help="which ip_vs module the VM loads (default: %(default)s)",
    )
    parser.add_argument("command", nargs="+")
    options = parser.parse_args(argv)
    results = options.results or Path(tempfile.mkdtemp(prefix="ipvs-vm-results-"))
    try:
        image = ensure_image(variant=options.variant)
        run = run_in_vm(
            image,
            options.command,
            cwd=Path.cwd(),
            results=results,
            timeout_seconds=options.timeout,
            env={ENVIRONMENT: image.variant.value},
        )
    except VmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(run.job_log)
    print(
        f"[vm] kernel {image.release} ({image.variant.title}), {run.seconds:.1f} s, "
        f"exit {run.exit_code}, results in {results}",
        file=sys.stderr,
    )
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
