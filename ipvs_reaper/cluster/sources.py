"""Where the cluster state comes from: a file an SRE exported, or one listing from the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ipvs_reaper.cluster.api import ApiFailure, ClusterApi, client_configuration
from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.parse import ItemError, cluster_state_from_items
from ipvs_reaper.errors import InputError, RuntimeFailure


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None


def parse_cluster_document(text: str, source: str) -> ClusterState:
    """The output of `kubectl get services,endpointslices,nodes -A -o json` (or `-o yaml`)."""
    try:
        # JSON is YAML, but the JSON parser is much faster on a large cluster's export.
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{source}: not valid JSON or YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise InputError(f"{source}: expected a List with 'items' (kubectl get ... -o json)")
    try:
        return cluster_state_from_items(document["items"])
    except ItemError as error:
        raise InputError(f"{source}: {error}") from None


def load_cluster_file(path: str) -> ClusterState:
    return parse_cluster_document(_read_text(path), "<stdin>" if path == "-" else path)


def load_cluster_api(node_name: str, kubeconfig: str | None = None) -> ClusterState:
    """List Services, EndpointSlices and this node once (in-cluster config first, then kubeconfig)."""
    api = ClusterApi(client_configuration(kubeconfig))
    try:
        items = api.list_services() + api.list_endpoint_slices()
        node = api.read_node(node_name)
    except ApiFailure as error:
        raise RuntimeFailure(f"listing the cluster state from the API: {error}") from None
    finally:
        api.close()
    if node is not None:
        items.append(node)
    try:
        return cluster_state_from_items(items)
    except ItemError as error:
        raise RuntimeFailure(f"the API returned an object we cannot read: {error}") from None
