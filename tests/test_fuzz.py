"""Fuzzing in the suite: every parser of outside input (tests/fuzz/targets.py) over generated input, where
any exception but our own input error fails. Hypothesis feeds bytes, text and mutated real objects; a short
coverage-guided atheris run of each target checks the long-run harness itself. Long runs and their figures:
docs/reliability.md."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.seeds import seeds
from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent.parent

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """A real document with a few values replaced or keys removed, anywhere in it."""
    document = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 4))):
        node, parent, key = document, None, None
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            continue
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[key]
        else:
            parent[key] = draw(_json_values)
    return document


def _structured(target: str) -> st.SearchStrategy[bytes]:
    real = [json.loads(seed) for seed in seeds(target) if seed.lstrip().startswith((b"{", b"["))]
    if not real:
        return st.nothing()
    documents = st.sampled_from(real).flatmap(mutated)
    return st.one_of(
        documents.map(lambda d: json.dumps(d).encode()),
        documents.map(lambda d: yaml.safe_dump(d).encode()),
    )


def _inputs(target: str) -> st.SearchStrategy[bytes]:
    texts = st.sampled_from(seeds(target)).flatmap(
        lambda seed: st.tuples(st.integers(0, len(seed)), st.binary(max_size=40), st.integers(0, 40)).map(
            lambda cut: seed[: cut[0]] + cut[1] + seed[cut[0] + cut[2] :]
        )
    )
    return st.one_of(
        st.binary(max_size=300), st.text(max_size=300).map(str.encode), texts, _structured(target)
    )


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_no_input_raises_anything_but_an_input_error(name: str) -> None:
    target = TARGETS[name]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_inputs(name))
    def run(data: bytes) -> None:
        target(data)

    run()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_coverage_guided_run_finds_nothing(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, "-runs=3000", "-timeout=10", "-rss_limit_mb=2048"],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "Done 3000 runs" in done.stderr
