"""The Kubernetes API as the reaper uses it: credentials, full listings, this node's Node, and Events.

Objects are read as raw JSON: the client's generated models are slow on large listings and drop fields.
Every call is blocking; the agent runs them in a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from ipvs_reaper.errors import RuntimeFailure

_PAGE_SIZE = 500
# What a transport or server failure can raise from the client.
API_ERRORS = (ApiException, HTTPError, OSError, json.JSONDecodeError)


class ApiFailure(RuntimeFailure):
    """The API could not be reached or refused a request."""


def client_configuration(kubeconfig: str | None) -> client.Configuration:
    """In-cluster service account first, then the kubeconfig (the given file, or the default one)."""
    configuration = client.Configuration()
    try:
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
                return configuration
            except ConfigException:
                pass
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError) as error:
        raise RuntimeFailure(f"no Kubernetes credentials (in-cluster or kubeconfig): {error}") from None
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
                items = page.get("items") or []
                for item in items:
                    item["kind"] = kind  # list responses leave it out of their items
                yield items
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    return
        except API_ERRORS as error:
            raise ApiFailure(f"listing {kind} objects: {_describe(error)}") from None


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return str(error) or type(error).__name__
