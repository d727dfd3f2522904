"""Coverage-guided fuzzing of one target with atheris (libFuzzer):

    .venv/bin/python -m tests.fuzz.run TARGET [libFuzzer flags, e.g. -max_total_time=600 -timeout=10]

Seeds come from tests/fuzz/seeds.py; a crash (any exception but the target's input error) or a hang
(`-timeout`) stops the run and leaves the input as crash-* or timeout-* in the working directory.
`-runs=N` bounds the run by inputs instead of time."""

from __future__ import annotations

import copy
import functools
import json
import random
import sys
import tempfile
from pathlib import Path

import atheris
import yaml

with atheris.instrument_imports(include=["ipvs_reaper", "yaml"]):
    from tests.fuzz.seeds import seeds
    from tests.fuzz.targets import TARGETS


# Targets whose input is JSON: byte mutations mostly break the JSON, so the parser behind it is never reached.
# For those, most mutations edit the decoded document instead (a value replaced, a key dropped, a subtree
# copied elsewhere), so that the objects stay objects with wrong things in them.
JSON_TARGETS = frozenset({"api_objects", "cluster_list", "node_addresses", "first_seen_file", "nft_ruleset"})
# The same for the operator's YAML documents: a huge number reaches a real key instead of a broken line.
YAML_TARGETS = frozenset({"config", "annotation"})
_ODD_VALUES: list[object] = [
    None, True, False, 0, -1, 2**31, 2**64, -(2**63) - 1, 10**30, 0.5, float("nan"), float("inf"), "", "None",
    "10.96.0.999", "fd00::1", "::", "0.0.0.0", "TCP", "FQDN", "IPv4", "x" * 300, [], {}, [None], {"": None},
]  # fmt: skip


def _paths(node: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


def _at(node: object, path: tuple[object, ...]) -> object:
    for step in path:
        node = node[step]  # type: ignore[index]
    return node


def _decode(data: bytes, form: str) -> object:
    try:
        return json.loads(data) if form == "json" else yaml.safe_load(data)
    except (ValueError, RecursionError, yaml.YAMLError):
        return None


def _encode(document: object, form: str) -> bytes:
    if form == "json":
        return json.dumps(document).encode()
    return yaml.safe_dump(document, allow_unicode=True).encode()


def document_mutator(form: str, data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    document = _decode(data, form)
    paths = _paths(document)[1:] if isinstance(document, dict | list) else []
    if not paths or rng.random() < 0.2:
        return bytes(atheris.Mutate(data, max_size))
    for _ in range(rng.randint(1, 3)):
        paths = _paths(document)[1:]
        if not paths:
            break
        path = rng.choice(paths)
        parent, last = _at(document, path[:-1]), path[-1]
        choice = rng.random()
        if choice < 0.2 and isinstance(parent, dict):
            del parent[last]
        elif choice < 0.35:
            parent[last] = copy.deepcopy(_at(document, rng.choice(paths)))  # type: ignore[index]
        else:
            parent[last] = copy.deepcopy(rng.choice(_ODD_VALUES))  # type: ignore[index]
    return _encode(document, form)[:max_size]


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    name, flags = argv[1], argv[2:]
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for index, seed in enumerate(seeds(name)):
        (corpus / f"seed-{index}").write_bytes(seed)
    target = TARGETS[name]
    form = "json" if name in JSON_TARGETS else "yaml" if name in YAML_TARGETS else None
    mutator = functools.partial(document_mutator, form) if form is not None else None
    atheris.Setup([argv[0], *flags, str(corpus)], target, custom_mutator=mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
