"""Coverage-guided fuzzing of one target with atheris (libFuzzer):

    .venv/bin/python -m tests.fuzz.run TARGET [libFuzzer flags, e.g. -max_total_time=600 -timeout=10]

Seeds come from tests/fuzz/seeds.py; a crash (any exception but the target's input error) or a hang
(`-timeout`) stops the run and leaves the input as crash-* or timeout-* in the working directory.
`-runs=N` bounds the run by inputs instead of time."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ipvs_reaper", "yaml"]):
    from tests.fuzz.seeds import seeds
    from tests.fuzz.targets import TARGETS


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    name, flags = argv[1], argv[2:]
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for index, seed in enumerate(seeds(name)):
        (corpus / f"seed-{index}").write_bytes(seed)
    target = TARGETS[name]
    atheris.Setup([argv[0], *flags, str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
