"""Where the cluster state comes from: a file an SRE exported, or one listing from the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ipvs_reaper.cluster.model import ClusterState
from ipvs_reaper.cluster.parse import ItemError, cluster_state_from_items
from ipvs_reaper.errors import InputError, RuntimeFailure

_PAGE_SIZE = 500


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


def _list_all(call: Any, kind: str) -> list[dict[str, Any]]:
    """Every object of one kind, page by page, as raw JSON (the client's models are slow and lossy)."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        response = call(limit=_PAGE_SIZE, _continue=token, _preload_content=False)
        page = json.loads(response.data)
        for item in page.get("items") or []:
            # List responses leave `kind` out of their items.
            item["kind"] = kind
            items.append(item)
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return items


def load_cluster_api(node_name: str, kubeconfig: str | None = None) -> ClusterState:
    """List Services, EndpointSlices and this node once (in-cluster config first, then kubeconfig)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config()
            except ConfigException:
                config.load_kube_config()
        else:
            config.load_kube_config(config_file=kubeconfig)
    except (ConfigException, OSError) as error:
        raise RuntimeFailure(f"no Kubernetes credentials (in-cluster or kubeconfig): {error}") from None
    with client.ApiClient() as api:
        core = client.CoreV1Api(api)
        discovery = client.DiscoveryV1Api(api)
        try:
            items = _list_all(core.list_service_for_all_namespaces, "Service")
            items += _list_all(discovery.list_endpoint_slice_for_all_namespaces, "EndpointSlice")
            try:
                node = json.loads(core.read_node(node_name, _preload_content=False).data)
                node["kind"] = "Node"
                items.append(node)
            except ApiException as error:
                if error.status != 404:
                    raise
        except (ApiException, HTTPError, OSError, json.JSONDecodeError) as error:
            raise RuntimeFailure(f"listing the cluster state from the API: {error}") from None
    try:
        return cluster_state_from_items(items)
    except ItemError as error:
        raise RuntimeFailure(f"the API returned an object we cannot read: {error}") from None
