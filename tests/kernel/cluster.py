"""Cluster-state files (what `kubectl get services,endpointslices,nodes -A -o json` prints) for the tier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests import builders

NODE = "node-a"
NODE_IP = "192.168.49.2"


def write_cluster_state(path: Path, *objects: dict[str, Any]) -> Path:
    items = [builders.node(NODE, NODE_IP), *objects]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path
