"""The config file's JSON Schema, built from the same names and bounds `config.py` validates with.

The chart's `values.schema.json` carries it under `config`, so `helm install` rejects a bad policy before a
pod starts; `tests/chart/test_schema.py` proves that the schema and `parse_config` accept and reject the same
documents. What a JSON Schema cannot say (a rule's `maxWaitSeconds` below the `graceSeconds` it ends up
with, and CIDR syntax in full) the chart's templates check, so helm still refuses it.

`python -m ipvs_reaper.config_schema` prints it, `... --write` updates the chart's copy; the test fails when
the two differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ipvs_reaper.config import (
    CIDR_PATTERN,
    MAX_COUNT,
    MAX_SECONDS,
    STATE_KEYS,
    ReapMode,
    SysctlMode,
)

_SECONDS = {"type": "integer", "minimum": 0, "maximum": MAX_SECONDS}
_OBJECT_OR_NULL = ["object", "null"]  # an empty key (`policy:`) means "nothing to change", as in the agent


def _rule() -> dict[str, Any]:
    return {
        "type": _OBJECT_OR_NULL,
        "additionalProperties": False,
        "properties": {
            "reap": {"enum": [mode.value for mode in ReapMode]},
            "graceSeconds": _SECONDS,
            # null: no cap (removes the one the rule would inherit)
            "maxWaitSeconds": {"oneOf": [_SECONDS, {"type": "null"}]},
        },
    }


def _policy() -> dict[str, Any]:
    return {
        "type": _OBJECT_OR_NULL,
        "additionalProperties": False,
        "properties": {key: _rule() for key in STATE_KEYS},
    }


def _cidrs() -> dict[str, Any]:
    return {
        "oneOf": [
            {"type": "null"},
            {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": CIDR_PATTERN}},
        ]
    }


def config_schema() -> dict[str, Any]:
    """Self-contained (no `$ref`): it is embedded in the chart's values schema, whose root `#` is not this."""
    return {
        "type": _OBJECT_OR_NULL,
        "description": "The agent's config file (README: Configuration), written to the ConfigMap as it is",
        "additionalProperties": False,
        "properties": {
            "policy": _policy(),
            "namespaces": {"type": _OBJECT_OR_NULL, "additionalProperties": _policy()},
            "expireNodestConn": {"enum": [mode.value for mode in SysctlMode]},
            "breaker": {
                "type": _OBJECT_OR_NULL,
                "additionalProperties": False,
                "properties": {
                    "maxShare": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "minDeletions": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT},
                    "maxPerSweep": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
                },
            },
            "nodePortAddresses": _cidrs(),
            "excludeCIDRs": _cidrs(),
        },
    }


def write_into(values_schema: Path) -> None:
    """Replace the chart's copy (`properties.config` of its values schema) with this one."""
    document = json.loads(values_schema.read_text())
    document["properties"]["config"] = config_schema()
    values_schema.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write_into(Path(sys.argv[2] if len(sys.argv) > 2 else "charts/ipvs-reaper/values.schema.json"))
    else:
        print(json.dumps(config_schema(), indent=2))
