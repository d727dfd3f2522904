"""The agent's own view of the cluster: the parsed fields of every Service and EndpointSlice and of
this node's Node, kept current by list and watch.

Keyed per object, the way kubespawner's reflector keeps its objects: a full listing replaces a kind
wholesale, so an object deleted while the watch was down disappears (a watch resumed after 410 Gone only re-
sends what still exists). The view is usable only once every kind has been listed, and only while every kind
has been heard from (an event, a bookmark or a listing) within `max_silence` seconds: a stale view reaps
nothing.

An object that does not parse is kept as an error, never dropped silently. A broken EndpointSlice makes its
Service's real servers untouchable (its namespace's, when not even its Service can be read); a broken
Service makes the whole view unusable, since it could claim any address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ipvs_reaper.cluster.model import ClusterState, EndpointSlice, Node, Service
from ipvs_reaper.cluster.parse import (
    SERVICE_NAME_LABEL,
    ObjectError,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)

SERVICE, ENDPOINT_SLICE, NODE = "Service", "EndpointSlice", "Node"
KINDS = (SERVICE, ENDPOINT_SLICE, NODE)


@dataclass(frozen=True, slots=True)
class ObjectKey:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, slots=True)
class BrokenObject:
    key: ObjectKey
    message: str
    # What it makes untouchable: a Service ref, "namespace/*", or None for the whole view.
    scope: str | None


def _key(kind: str, body: Any) -> ObjectKey | None:
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace", "")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return ObjectKey(kind, namespace, name)


def _scope_of_broken(key: ObjectKey, body: Mapping[str, Any]) -> str | None:
    if key.kind == SERVICE:
        return None
    if key.kind == NODE:
        # Without our Node its NodePort virtual services map to nothing, and unmapped ones are kept anyway.
        return f"node/{key.name}"
    meta = body.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return f"{key.namespace}/{service}" if isinstance(service, str) and service else f"{key.namespace}/*"


class ClusterCache:
    def __init__(self, node_name: str, clock: Callable[[], float], max_silence: float) -> None:
        self._node_name = node_name
        self._clock = clock
        self._max_silence = max_silence
        self._services: dict[ObjectKey, Service] = {}
        self._slices: dict[ObjectKey, EndpointSlice] = {}
        self._node: Node | None = None
        self._broken: dict[ObjectKey, BrokenObject] = {}
        # Objects without a readable name cannot be updated or deleted by key; a listing clears them.
        self._nameless: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._listed: set[str] = set()
        self._heard: dict[str, float] = {}

    # --- feeding -------------------------------------------------------------------------------------------

    def replace(self, kind: str, bodies: Iterable[Mapping[str, Any]]) -> None:
        """A complete listing of one kind: whatever it does not contain is gone."""
        self._forget_kind(kind)
        for body in bodies:
            self._store(kind, body)
        self._listed.add(kind)
        self.heard_from(kind)

    def upsert(self, kind: str, body: Mapping[str, Any]) -> None:
        key = _key(kind, body)
        if key is not None:
            self._forget(key)
        self._store(kind, body)
        self.heard_from(kind)

    def remove(self, kind: str, body: Mapping[str, Any]) -> None:
        key = _key(kind, body)
        if key is None:
            self._nameless[kind] += 1
        else:
            self._forget(key)
        self.heard_from(kind)

    def heard_from(self, kind: str) -> None:
        """An event, a bookmark or a listing of `kind`: the watch is alive."""
        self._heard[kind] = self._clock()

    # --- reading -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(kind in self._listed for kind in KINDS)

    def silent_kinds(self) -> tuple[str, ...]:
        now = self._clock()
        return tuple(kind for kind in KINDS if now - self._heard.get(kind, float("-inf")) > self._max_silence)

    @property
    def broken(self) -> tuple[BrokenObject, ...]:
        return tuple(self._broken.values())

    def snapshot(self) -> ClusterState:
        problems = [f"not listed yet: {kind}" for kind in KINDS if kind not in self._listed]
        if self.ready:
            problems += [
                f"no word from the API about {kind} objects for over {self._max_silence:g} s (watch down?)"
                for kind in self.silent_kinds()
            ]
            problems += [
                f"the listing has no {kind} objects"
                for kind in (SERVICE, ENDPOINT_SLICE)
                if not self._has(kind)
            ]
        problems += [
            f"{b.key} cannot be read ({b.message}): it could claim any address"
            for b in self.broken
            if b.scope is None
        ]
        problems += [
            f"{count} {kind} object(s) without a readable name; waiting for the next listing"
            for kind, count in self._nameless.items()
            if count
        ]
        broken = {
            b.scope: f"{b.key} cannot be read ({b.message})" for b in self.broken if b.scope is not None
        }
        return ClusterState(
            services=tuple(self._services.values()),
            slices=tuple(self._slices.values()),
            nodes=(self._node,) if self._node is not None else (),
            problems=tuple(problems),
            broken=broken,
        )

    # --- internals -----------------------------------------------------------------------------------------

    def _has(self, kind: str) -> bool:
        held = self._services if kind == SERVICE else self._slices
        return bool(held) or any(b.key.kind == kind for b in self.broken)

    def _forget_kind(self, kind: str) -> None:
        if kind == SERVICE:
            self._services.clear()
        elif kind == ENDPOINT_SLICE:
            self._slices.clear()
        else:
            self._node = None
        self._broken = {key: b for key, b in self._broken.items() if key.kind != kind}
        self._nameless[kind] = 0

    def _forget(self, key: ObjectKey) -> None:
        self._services.pop(key, None)
        self._slices.pop(key, None)
        self._broken.pop(key, None)
        if key.kind == NODE and key.name == self._node_name:
            self._node = None

    def _store(self, kind: str, body: Mapping[str, Any]) -> None:
        key = _key(kind, body)
        if key is None:
            self._nameless[kind] += 1
            return
        if kind == NODE and key.name != self._node_name:
            return  # only this node's addresses carry NodePort virtual services here
        try:
            if kind == SERVICE:
                self._services[key] = parse_service(body)
            elif kind == ENDPOINT_SLICE:
                parsed = parse_endpoint_slice(body)
                if parsed is not None:
                    self._slices[key] = parsed
            else:
                self._node = parse_node(body)
        except ObjectError as error:
            self._broken[key] = BrokenObject(key, str(error), _scope_of_broken(key, body))
