"""The agent's API calls, on kopf's HTTP client: its login, TLS, and new credentials after a 401.

Not the official client, on purpose: that library's import alone is about 20 MiB of every node's agent (its
generated models), and the agent needs four requests: list a page, watch, read one object, post an Event.
Each request fails at once (no retries here): the caller decides how to wait, and says so once.

Answers are returned as raw bytes where they can be large, so that the caller decodes them off the event loop.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import kopf
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors

from ipvs_reaper.errors import ApiFailure

# Quiet unless debugging (logs.py): kopf logs every failed request here, and the callers say it once.
log = logging.getLogger("ipvs_reaper.cluster.requests")

_NO_RETRIES: tuple[float, ...] = ()


# Not an event the API sends: a watch's first item once the server has answered 200, so that a watch on a
# quiet kind counts as up before its first event or bookmark.
OPENED = "OPENED"


class Gone(ApiFailure):
    """410 Gone: the resource version is older than the API server still knows; list again."""


@dataclass(frozen=True, slots=True)
class Collection:
    """A cluster-wide collection the agent lists and watches."""

    kind: str
    path: str  # "/api/v1/services"
    field_selector: str | None = None


class WatchApi(Protocol):
    async def list_page(
        self, collection: Collection, resource_version: str | None, token: str | None
    ) -> bytes: ...

    def watch(self, collection: Collection, since: str) -> AsyncIterator[dict[str, Any]]: ...

    async def read(self, path: str, resource_version: str | None = None) -> dict[str, Any] | None: ...

    async def create(self, path: str, body: dict[str, Any]) -> None: ...


def list_params(
    collection: Collection, resource_version: str | None, token: str | None, limit: int
) -> dict[str, str]:
    """A listing's query. A continued page names only its token (the API refuses a version beside it); the
    first page asks the watch cache: "0" for any version it has, a version for one no older than it."""
    params = {"limit": str(limit)}
    if collection.field_selector:
        params["fieldSelector"] = collection.field_selector
    if token:
        params["continue"] = token
    elif resource_version is not None:
        params["resourceVersion"] = resource_version
        if resource_version != "0":
            params["resourceVersionMatch"] = "NotOlderThan"
    return params


def watch_params(collection: Collection, since: str, timeout: float) -> dict[str, str]:
    params = {
        "watch": "true",
        "allowWatchBookmarks": "true",
        "resourceVersion": since,
        "timeoutSeconds": str(max(1, int(timeout))),
    }
    if collection.field_selector:
        params["fieldSelector"] = collection.field_selector
    return params


def _url(path: str, params: Mapping[str, str]) -> str:
    return f"{path}?{urllib.parse.urlencode(params)}" if params else path


def _describe(error: BaseException) -> str:
    if isinstance(error, kopf_errors.APIError):
        return f"HTTP {error.status}" + (f": {error.message}" if error.message else "")
    return str(error) or type(error).__name__


# What a request can fail with, short of a bug: the transport, the server's status, a body that is not JSON
# (or nested deeper than the decoder can follow).
_FAILURES = (aiohttp.ClientError, TimeoutError, OSError, kopf_errors.APIError, ValueError, RecursionError)


class KopfApi:
    def __init__(
        self,
        settings: kopf.OperatorSettings,
        *,
        request_timeout: float = 30.0,
        watch_timeout: float = 300.0,
        page_size: int = 500,
    ) -> None:
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, sock_connect=10)
        self._watch_timeout = watch_timeout
        # A watch lasts up to its server-side timeout; the client gives up a little after it.
        self._stream_timeout = aiohttp.ClientTimeout(total=watch_timeout + 30, sock_connect=10)
        self._page_size = page_size

    async def list_page(
        self, collection: Collection, resource_version: str | None, token: str | None
    ) -> bytes:
        url = _url(collection.path, list_params(collection, resource_version, token, self._page_size))
        try:
            response = await self._request("get", url, timeout=self._timeout)
            async with response:
                return await response.read()
        except _FAILURES as error:
            raise self._failure(f"listing {collection.kind} objects", error) from None

    async def watch(self, collection: Collection, since: str) -> AsyncIterator[dict[str, Any]]:
        """The watch's events from `since` until the server ends the request (a normal end), after an OPENED
        item. Raises Gone for a 410, as a status or as an ERROR event, and ApiFailure for anything else that
        goes wrong."""
        url = _url(collection.path, watch_params(collection, since, self._watch_timeout))
        what = f"watching {collection.kind} objects"
        try:
            response = await self._request("get", url, timeout=self._stream_timeout)
            async with response:
                yield {"type": OPENED}  # the server took the watch: it is up, even before any event
                async for line in kopf_api.iter_jsonlines(response.content):
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ApiFailure(f"{what}: an event that is not an object")
                    if event.get("type") == "ERROR":
                        status = event.get("object")
                        code = status.get("code") if isinstance(status, dict) else None
                        message = status.get("message") if isinstance(status, dict) else None
                        if code == 410:
                            raise Gone(f"{what}: 410 Gone ({message or 'too old a resource version'})")
                        raise ApiFailure(f"{what}: the API sent an error: {code} {message}")
                    yield event
        except _FAILURES as error:
            raise self._failure(what, error) from None

    async def read(self, path: str, resource_version: str | None = None) -> dict[str, Any] | None:
        """One object, or None when the API says it does not exist."""
        params = {"resourceVersion": resource_version} if resource_version is not None else {}
        try:
            response = await self._request("get", _url(path, params), timeout=self._timeout)
            async with response:
                body = json.loads(await response.read())
        except kopf_errors.APINotFoundError:
            return None
        except _FAILURES as error:
            raise self._failure(f"reading {path}", error) from None
        if not isinstance(body, dict):
            raise ApiFailure(f"reading {path}: the API answered with a {type(body).__name__}, not an object")
        return body

    async def create(self, path: str, body: dict[str, Any]) -> None:
        try:
            response = await self._request("post", path, timeout=self._timeout, payload=body)
            response.close()
        except _FAILURES as error:
            raise self._failure(f"posting to {path}", error) from None

    async def _request(
        self, method: str, url: str, *, timeout: aiohttp.ClientTimeout, payload: object | None = None
    ) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await kopf_api.request(
            method,
            url,
            payload=payload,
            timeout=timeout,
            backoffs=_NO_RETRIES,
            settings=self._settings,
            logger=log,
        )
        return response

    @staticmethod
    def _failure(what: str, error: BaseException) -> ApiFailure:
        if isinstance(error, kopf_errors.APIError) and error.status == 410:
            return Gone(f"{what}: 410 Gone")
        return ApiFailure(f"{what}: {_describe(error)}")
