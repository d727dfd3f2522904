"""Where the cluster state comes from: a file an SRE exported, or one listing from the API."""

from __future__ import annotations

import json

import yaml

from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.parse import cluster_state_from_items
from ipvs_reaper.errors import ApiFailure, InputError, RuntimeFailure
from ipvs_reaper.input_text import read_input_text, source_name
from ipvs_reaper.yaml_text import yaml_error_text


def parse_cluster_document(text: str, source: str) -> ClusterState:
    """The output of `kubectl get services,endpointslices,nodes -A -o json` (or `-o yaml`)."""
    try:
        # JSON is YAML, but the JSON parser is much faster on a large cluster's export.
        document = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: not valid JSON: line {error.lineno}: {error.msg}") from None
    except yaml.YAMLError as error:
        raise InputError(f"{source}: not valid YAML: {yaml_error_text(error)}") from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply to be a kubectl export") from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        return cluster_state_from_items(document["items"])
    if isinstance(document, dict) and isinstance(document.get("kind"), str):
        raise InputError(
            f"{source}: a single {document['kind']}, not a List: export everything with "
            "`kubectl get services,endpointslices,nodes -A -o json`"
        )
    raise InputError(f"{source}: expected a List with 'items' (kubectl get ... -o json)")


def load_cluster_file(path: str) -> ClusterState:
    return parse_cluster_document(read_input_text(path), source_name(path))


def load_cluster_api(node_name: str, kubeconfig: str | None = None) -> ClusterState:
    """List Services, EndpointSlices and this node once (in-cluster config first, then kubeconfig)."""
    # Imported here: the official client is ~20 MiB, which `run` (the agent) does without.
    from ipvs_reaper.cluster.api import ClusterApi, client_configuration

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
    return cluster_state_from_items(items)
