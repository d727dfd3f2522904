"""The Kubernetes API as the one-shot commands use it (scan, reap --once, doctor): credentials, full
listings, this node's Node and Pods. The agent has its own, lighter client (watch_api.py).

Objects are read as raw JSON: the client's generated models are slow on large listings and drop fields.
Every call is blocking; the agent runs them in a thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION
from urllib3.exceptions import HTTPError, MaxRetryError

from ipvs_reaper.errors import ApiFailure, InputError, RuntimeFailure
from ipvs_reaper.input_text import read_input_text
from ipvs_reaper.yaml_text import yaml_error_text

_PAGE_SIZE = 500
# What a transport or server failure can raise from the client.
API_ERRORS = (ApiException, HTTPError, OSError, json.JSONDecodeError, RecursionError)


def _kubeconfig_path(given: str | None) -> str | None:
    """The one kubeconfig file to read, or None when the client should merge a $KUBECONFIG list itself."""
    if given is not None:
        return given
    listed = os.environ.get("KUBECONFIG", "")
    if os.pathsep in listed:
        return None
    return listed or os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION)


def _check_kubeconfig(path: str) -> None:
    """The file's own faults as input errors naming it: the client raises whatever its parser hits."""
    try:
        document = yaml.safe_load(read_input_text(path))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not a kubeconfig: not valid YAML: {yaml_error_text(error)}") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: not a kubeconfig: expected a mapping with clusters, users and contexts")


def client_configuration(kubeconfig: str | None) -> client.Configuration:
    """In-cluster service account first, then the kubeconfig (the given file, or the default one).

    Raises InputError for a kubeconfig that cannot be used (naming it), RuntimeFailure when there are no
    credentials at all."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
        except ConfigException:
            pass
    path = _kubeconfig_path(kubeconfig)
    if path is not None and kubeconfig is None and not os.path.exists(path):
        raise RuntimeFailure(
            f"no Kubernetes credentials: not running in a cluster, and no kubeconfig at {path} "
            "(give one with --kubeconfig or $KUBECONFIG)"
        )
    if path is not None:
        _check_kubeconfig(path)
    try:
        config.load_kube_config(config_file=path, client_configuration=configuration)
    except ConfigException as error:
        raise InputError(f"{path or '$KUBECONFIG'}: not a usable kubeconfig: {error}") from None
    except (TypeError, AttributeError, KeyError, ValueError, OSError) as error:
        # The client indexes the document without checking its shape.
        raise InputError(
            f"{path or '$KUBECONFIG'}: not a usable kubeconfig ({type(error).__name__}: {error})"
        ) from None
    return configuration


class ClusterApi:
    def __init__(self, configuration: client.Configuration, request_timeout: float = 30.0) -> None:
        self.configuration = configuration
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)
        self._discovery = client.DiscoveryV1Api(self._api)
        self._timeout = request_timeout

    def close(self) -> None:
        self._api.close()

    def list_services(self) -> list[dict[str, Any]]:
        return [item for page in self.service_pages() for item in page]

    def list_endpoint_slices(self) -> list[dict[str, Any]]:
        return [item for page in self.endpoint_slice_pages() for item in page]

    def service_pages(self) -> Iterator[list[dict[str, Any]]]:
        """Every Service, a page at a time: a caller that parses each page holds one page of raw JSON."""
        return self._pages(self._core.list_service_for_all_namespaces, "Service")

    def endpoint_slice_pages(self) -> Iterator[list[dict[str, Any]]]:
        return self._pages(self._discovery.list_endpoint_slice_for_all_namespaces, "EndpointSlice")

    def list_node_pods(self, node_name: str) -> list[dict[str, Any]]:
        """The Pods scheduled to one node (a field selector: the API server filters, the list stays small)."""

        def call(**kwargs: Any) -> Any:
            return self._core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name}", **kwargs
            )

        return [item for page in self._pages(call, "Pod") for item in page]

    def read_node(self, name: str) -> dict[str, Any] | None:
        """This node's Node, or None when the API says it does not exist."""
        try:
            response = self._core.read_node(name, _preload_content=False, _request_timeout=self._timeout)
            node: dict[str, Any] = json.loads(response.data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ApiFailure(f"reading Node {name}: {_describe(error)}") from None
        except API_ERRORS as error:
            raise ApiFailure(f"reading Node {name}: {_describe(error)}") from None
        if not isinstance(node, dict):
            raise ApiFailure(
                f"reading Node {name}: the API answered with a {type(node).__name__}, not an object"
            )
        node["kind"] = "Node"
        return node

    def create_event(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self._core.create_namespaced_event(
                namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
        except API_ERRORS as error:
            raise ApiFailure(f"posting an Event in {namespace}: {_describe(error)}") from None

    def _pages(self, call: Any, kind: str) -> Iterator[list[dict[str, Any]]]:
        token = None
        try:
            while True:
                response = call(
                    limit=_PAGE_SIZE, _continue=token, _preload_content=False, _request_timeout=self._timeout
                )
                page = json.loads(response.data)
                if not isinstance(page, dict):
                    raise ApiFailure(f"listing {kind} objects: the answer is not a List")
                items, meta = page.get("items"), page.get("metadata")
                if not isinstance(items, list | None) or not isinstance(meta, dict | None):
                    raise ApiFailure(f"listing {kind} objects: the answer is not a List")
                for item in items or ():
                    if isinstance(item, dict):  # anything else is kept as unreadable by the cache
                        item["kind"] = kind  # list responses leave it out of their items
                yield items or []
                token = (meta or {}).get("continue")
                if not token:
                    return
        except API_ERRORS as error:
            raise ApiFailure(f"listing {kind} objects: {_describe(error)}") from None


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    if isinstance(error, MaxRetryError) and error.reason is not None:
        # "Max retries exceeded with url ... (Caused by ...)": the cause alone is what a person needs.
        return f"{error.url}: {error.reason}"
    return str(error) or type(error).__name__
