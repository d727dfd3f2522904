"""The agent's own view of the cluster: the parsed fields of every Service and EndpointSlice and of
this node's Node, kept current by list and watch.

Keyed per object, the way kubespawner's reflector keeps its objects: a full listing replaces a kind
wholesale, so an object deleted while the watch was down disappears (a watch resumed after 410 Gone only re-
sends what still exists). The view is usable only once every kind has been listed, and only while every kind
has been heard from (an event, a bookmark or a listing) within `max_silence` seconds: a stale view reaps
nothing.

A listing races the watch: an object the watch delivered while the listing was running keeps the watch's
version (the watch stream is ordered, so it is never behind for long; the listing may be).

An event reports which virtual services it can change, so the agent reconciles only those: the cache keeps
which Services claim each virtual service and which slices belong to each Service, and `view_for` gives
exactly the part of the view that decides those virtual services.

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
    ObjectError,
    broken_scope,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from ipvs_reaper.mapping import service_fronts
from ipvs_reaper.values import IPAddress, IPNetwork, Protocol, VirtualKey, split_node_port_addresses

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


@dataclass(frozen=True, slots=True)
class Affected:
    """The virtual services an event can change the decision for."""

    keys: frozenset[VirtualKey] = frozenset()
    # Our Node changed (NodePort virtual services move) or the view became (un)usable: sweep everything.
    everything: bool = False


NOTHING = Affected()
EVERYTHING = Affected(everything=True)


def _resource_version(body: Mapping[str, Any]) -> str | None:
    meta = body.get("metadata")
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) and version else None


def _key(kind: str, body: Any) -> ObjectKey | None:
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace", "")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return ObjectKey(kind, namespace, name)


@dataclass(frozen=True, slots=True)
class Parsed:
    """One listed or watched object, parsed: what the cache will hold for it."""

    key: ObjectKey | None  # None: no readable name
    held: (
        Service | EndpointSlice | Node | BrokenObject | None
    )  # None: nothing to hold (FQDN slice, other Node)
    version: str | None


def parse_object(kind: str, body: Mapping[str, Any], node_name: str) -> Parsed:
    """Pure, so a listing can be parsed page by page in a thread and its raw JSON dropped at once."""
    key = _key(kind, body)
    if key is None:
        return Parsed(None, None, None)
    version = _resource_version(body)
    if kind == NODE and key.name != node_name:
        return Parsed(key, None, version)  # only this node's addresses carry NodePort virtual services here
    held: Service | EndpointSlice | Node | BrokenObject | None
    try:
        if kind == SERVICE:
            held = parse_service(body)
        elif kind == ENDPOINT_SLICE:
            held = parse_endpoint_slice(body)
        else:
            held = parse_node(body)
    except ObjectError as error:
        held = BrokenObject(key, str(error), broken_scope(key.kind, key.namespace, key.name, body))
    return Parsed(key, held, version)


class ClusterCache:
    def __init__(self, node_name: str, clock: Callable[[], float], max_silence: float) -> None:
        self._node_name = node_name
        self._clock = clock
        self._max_silence = max_silence
        self._services: dict[ObjectKey, Service] = {}
        self._slices: dict[ObjectKey, EndpointSlice] = {}
        self._node: Node | None = None
        # The node's interface addresses (kube-proxy's NodePort addresses); until read, the Node's stand in.
        self._local_addresses: tuple[IPAddress, ...] = ()
        # kube-proxy's --nodeport-addresses, from the config: NodePorts only on addresses in these.
        self._node_port_networks: tuple[IPNetwork, ...] = ()
        self._broken: dict[ObjectKey, BrokenObject] = {}
        # Objects without a readable name cannot be updated or deleted by key; a listing clears them.
        self._nameless: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._listed: set[str] = set()
        # Kinds whose watch missed events (410 Gone), and why, until their next listing.
        self._lost: dict[str, str] = {}
        self._heard: dict[str, float] = {}
        self._versions: dict[ObjectKey, str] = {}
        # Which event last touched each key (stored or removed), to let a slower listing not undo it; kept
        # only while a listing is open (else it would keep every key ever deleted), by the listings' start.
        self._touched: dict[ObjectKey, int] = {}
        self._open_listings: dict[int, int] = {}
        self._generation = 0
        # Which Services claim each virtual service, the virtual services of each Service, and the slices
        # of each Service (by "namespace/name"). Tuples, not sets: nearly all hold one key, and a set of one
        # costs four times the memory on a cluster of tens of thousands of objects.
        self._claims: dict[VirtualKey, tuple[ObjectKey, ...]] = {}
        self._service_keys: dict[ObjectKey, tuple[VirtualKey, ...]] = {}
        # The Services with a NodePort, by (protocol, port).
        self._node_port_users: dict[tuple[Protocol, int], tuple[ObjectKey, ...]] = {}
        self._slices_of: dict[str, tuple[ObjectKey, ...]] = {}

    # --- feeding -------------------------------------------------------------------------------------------

    def begin_listing(self) -> int:
        """Call before a listing starts; hand the result to `replace`, or to `end_listing` if it fails."""
        self._open_listings[self._generation] = self._open_listings.get(self._generation, 0) + 1
        return self._generation

    def end_listing(self, since: int) -> None:
        """A listing begun at `since` ended without a `replace` (it failed)."""
        count = self._open_listings.get(since, 0) - 1
        if count > 0:
            self._open_listings[since] = count
        else:
            self._open_listings.pop(since, None)
        if not self._open_listings:
            self._touched.clear()

    def parse(self, kind: str, bodies: Iterable[Mapping[str, Any]]) -> list[Parsed]:
        """Thread-safe: touches nothing of the cache."""
        return [parse_object(kind, body, self._node_name) for body in bodies]

    def replace(self, kind: str, bodies: Iterable[Mapping[str, Any]], since: int | None = None) -> None:
        """A complete listing of one kind: whatever it does not contain is gone.

        With `since` (from `begin_listing`), objects the watch touched after the listing began keep the
        watch's state.
        """
        self.replace_parsed(kind, self.parse(kind, bodies), since)

    def replace_parsed(self, kind: str, entries: Iterable[Parsed], since: int | None = None) -> None:
        kept = {
            key: self._current(key)
            for key, generation in self._touched.items()
            if key.kind == kind and since is not None and generation > since
        }
        self._forget_kind(kind)
        for entry in entries:
            if entry.key is None or entry.key not in kept:
                self._hold(kind, entry)
        for key, state in kept.items():
            if state is not None:
                self._restore(key, *state)
        self._touched = {key: gen for key, gen in self._touched.items() if key.kind != kind or key in kept}
        if since is not None:
            self.end_listing(since)
        self._listed.add(kind)
        self._lost.pop(kind, None)
        self.heard_from(kind)

    def upsert(self, kind: str, body: Mapping[str, Any]) -> Affected:
        self.heard_from(kind)
        key = _key(kind, body)
        if key is None:
            self._nameless[kind] += 1
            return EVERYTHING
        if kind == NODE and key.name != self._node_name:
            return NOTHING
        version = _resource_version(body)
        if version is not None and self._versions.get(key) == version:
            return NOTHING  # the same object again (a watch restarted and re-sent what exists)
        before, standing = self._affected_by(key), self._standing()
        self._forget(key)
        self._hold(kind, parse_object(kind, body, self._node_name))
        self._touch(key)
        if self._standing() != standing:
            return EVERYTHING
        return self._union(before, self._affected_by(key))

    def remove(self, kind: str, body: Mapping[str, Any]) -> Affected:
        self.heard_from(kind)
        key = _key(kind, body)
        if key is None:
            self._nameless[kind] += 1
            return EVERYTHING
        before, standing = self._affected_by(key), self._standing()
        self._forget(key)
        self._touch(key)
        return EVERYTHING if self._standing() != standing else before

    def set_local_addresses(self, addresses: tuple[IPAddress, ...]) -> Affected:
        """The node's interface addresses changed (or were read for the first time): NodePorts move."""
        if addresses == self._local_addresses:
            return NOTHING
        return self._move_node_ports(addresses, self._node_port_networks)

    def set_node_port_networks(self, networks: tuple[IPNetwork, ...]) -> Affected:
        """The config's nodePortAddresses changed: NodePorts move."""
        if networks == self._node_port_networks:
            return NOTHING
        return self._move_node_ports(self._local_addresses, networks)

    def _move_node_ports(self, local: tuple[IPAddress, ...], networks: tuple[IPNetwork, ...]) -> Affected:
        before = self._node_addresses()
        self._local_addresses, self._node_port_networks = local, networks
        self._reclaim(before)
        return EVERYTHING

    def lost(self, kind: str, why: str) -> None:
        """The watch of `kind` missed events: its part of the view is incomplete until the next listing."""
        self._lost[kind] = why

    def heard_from(self, kind: str) -> None:
        """An event, a bookmark or a listing of `kind`: the watch is alive."""
        self._heard[kind] = self._clock()

    # --- reading -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(kind in self._listed for kind in KINDS)

    def heard_ages(self) -> dict[str, float]:
        """Seconds since each kind was last heard from (an event, a bookmark, a listing, a heartbeat for the
        Node); -1 for a kind never heard from."""
        now = self._clock()
        return {kind: now - self._heard[kind] if kind in self._heard else -1.0 for kind in KINDS}

    def silent_kinds(self, longer_than: float | None = None) -> tuple[str, ...]:
        """The kinds not heard from for over `longer_than` seconds (the maximum silence by default)."""
        limit = self._max_silence if longer_than is None else longer_than
        now = self._clock()
        return tuple(kind for kind in KINDS if now - self._heard.get(kind, float("-inf")) > limit)

    @property
    def broken(self) -> tuple[BrokenObject, ...]:
        return tuple(self._broken.values())

    def snapshot(self) -> ClusterState:
        return ClusterState(
            services=tuple(self._services.values()),
            slices=tuple(self._slices.values()),
            nodes=self._node_view(),
            problems=self._problems(),
            broken=self._broken_scopes(),
        )

    def _node_view(self) -> tuple[Node, ...]:
        addresses, left_out = self._node_addresses()
        if not addresses and not left_out and self._node is None:
            return ()
        return (Node(self._node_name, addresses, left_out, self._node_port_networks),)

    def view_for(self, keys: Iterable[VirtualKey]) -> ClusterState:
        """The part of the view that decides these virtual services: every Service claiming one of them,
        those Services' slices, this node, and the whole view's problems. The planner decides the same for
        their real servers as with the whole view (property-tested)."""
        keys = tuple(keys)
        services = {key for virtual in keys for key in self._claims.get(virtual, ())}
        if self._node_port_networks:
            # Inside nodePortAddresses a NodePort may stand on any Service's address (mapping.ClusterIndex).
            services |= {
                key
                for virtual in keys
                for key in self._node_port_users.get((virtual.protocol, virtual.port), ())
            }
        slices = {
            key
            for service in services
            for key in self._slices_of.get(f"{service.namespace}/{service.name}", ())
        }
        return ClusterState(
            services=tuple(self._services[key] for key in services if key in self._services),
            slices=tuple(self._slices[key] for key in slices if key in self._slices),
            nodes=self._node_view(),
            problems=self._problems(),
            broken=self._broken_scopes(),
        )

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the view must not be acted on now; empty when it may."""
        return self._problems()

    def _problems(self) -> tuple[str, ...]:
        problems = [f"not listed yet: {kind}" for kind in KINDS if kind not in self._listed]
        problems += [self._lost[kind] for kind in KINDS if kind in self._lost]
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
            if self._node is None and not any(b.key.kind == NODE for b in self.broken):
                # A wrong --node-name/$NODE_NAME: the node's NodePorts would map to nothing, silently.
                problems.append(
                    f"the API has no Node named {self._node_name!r}: is --node-name (or $NODE_NAME) right?"
                )
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
        return tuple(problems)

    def _broken_scopes(self) -> dict[str, str]:
        return {b.scope: f"{b.key} cannot be read ({b.message})" for b in self.broken if b.scope is not None}

    # --- internals -----------------------------------------------------------------------------------------

    def _has(self, kind: str) -> bool:
        held = self._services if kind == SERVICE else self._slices
        return bool(held) or any(b.key.kind == kind for b in self.broken)

    def _standing(self) -> tuple[tuple[str, ...], frozenset[str | None]]:
        """What every decision rests on: the view's problems (an unusable view's decisions all quote them)
        and which scopes are unreadable."""
        return self._problems(), frozenset(b.scope for b in self._broken.values())

    def _touch(self, key: ObjectKey) -> None:
        self._generation += 1
        if self._open_listings:
            self._touched[key] = self._generation

    def _union(self, first: Affected, second: Affected) -> Affected:
        if first.everything or second.everything:
            return EVERYTHING
        return Affected(first.keys | second.keys)

    def _affected_by(self, key: ObjectKey) -> Affected:
        if key.kind == NODE:
            return EVERYTHING if key.name == self._node_name else NOTHING
        if key in self._broken and self._broken[key].scope is None:
            return EVERYTHING  # its going or coming makes the whole view (un)usable
        if key.kind == SERVICE:
            service = self._services.get(key)
            if service is not None and self._node_port_networks and _node_ports(service):
                return EVERYTHING  # its NodePorts stand on any Service's address inside nodePortAddresses
            return Affected(frozenset(self._service_keys.get(key, ())))
        held = self._slices.get(key)
        if held is None:
            return NOTHING
        return Affected(self._keys_of_service(held.service_ref))

    def _keys_of_service(self, ref: str) -> frozenset[VirtualKey]:
        namespace, _, name = ref.partition("/")
        return frozenset(self._service_keys.get(ObjectKey(SERVICE, namespace, name), ()))

    def _current(
        self, key: ObjectKey
    ) -> tuple[Service | EndpointSlice | Node | BrokenObject, str | None] | None:
        """What the cache holds for `key` (to put back after a listing), None when nothing."""
        for held in (self._services.get(key), self._slices.get(key), self._broken.get(key)):
            if held is not None:
                return held, self._versions.get(key)
        if key.kind == NODE and key.name == self._node_name and self._node is not None:
            return self._node, self._versions.get(key)
        return None

    def _restore(
        self, key: ObjectKey, held: Service | EndpointSlice | Node | BrokenObject, version: str | None
    ) -> None:
        if isinstance(held, BrokenObject):
            self._broken[key] = held
        elif isinstance(held, Service):
            self._put_service(key, held)
        elif isinstance(held, EndpointSlice):
            self._put_slice(key, held)
        elif isinstance(held, Node):
            self._set_node(held)
        if version is not None:
            self._versions[key] = version

    def _forget_kind(self, kind: str) -> None:
        for key in [key for key in self._versions if key.kind == kind]:
            del self._versions[key]
        if kind == SERVICE:
            self._services.clear()
            self._claims.clear()
            self._service_keys.clear()
            self._node_port_users.clear()
        elif kind == ENDPOINT_SLICE:
            self._slices.clear()
            self._slices_of.clear()
        else:
            self._set_node(None)
        self._broken = {key: b for key, b in self._broken.items() if key.kind != kind}
        self._nameless[kind] = 0

    def _forget(self, key: ObjectKey) -> None:
        self._versions.pop(key, None)
        self._broken.pop(key, None)
        if key in self._services:
            for at in _node_ports(self._services.pop(key)):
                _drop(self._node_port_users, at, key)
            for virtual in self._service_keys.pop(key, ()):
                _drop(self._claims, virtual, key)
        held = self._slices.pop(key, None)
        if held is not None:
            _drop(self._slices_of, held.service_ref, key)
        if key.kind == NODE and key.name == self._node_name:
            self._set_node(None)

    def _hold(self, kind: str, entry: Parsed) -> None:
        if entry.key is None:
            self._nameless[kind] += 1
        elif entry.held is not None:
            self._restore(entry.key, entry.held, entry.version)

    def _node_addresses(self) -> tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]:
        """Where NodePorts are, and the node's other addresses. kube-proxy puts NodePorts on the interfaces'
        addresses, not the Node object's: those stand in only while the interfaces could not be read."""
        own = self._node.addresses if self._node is not None else ()
        return split_node_port_addresses(self._local_addresses or own, self._node_port_networks)

    def _put_service(self, key: ObjectKey, service: Service) -> None:
        self._services[key] = service
        # Fronts kube-proxy does not build count too: their reason for being kept names this Service.
        keys = tuple({front.key for front in service_fronts(service, *self._node_addresses())})
        self._service_keys[key] = keys
        for virtual in keys:
            _add(self._claims, virtual, key)
        for at in _node_ports(service):
            _add(self._node_port_users, at, key)

    def _put_slice(self, key: ObjectKey, endpoint_slice: EndpointSlice) -> None:
        self._slices[key] = endpoint_slice
        _add(self._slices_of, endpoint_slice.service_ref, key)

    def _set_node(self, node: Node | None) -> None:
        before = self._node_addresses()
        self._node = node
        self._reclaim(before)

    def _reclaim(self, before: tuple[tuple[IPAddress, ...], tuple[IPAddress, ...]]) -> None:
        if self._node_addresses() == before:
            return
        # NodePort virtual services live on the node's addresses: claim them anew.
        self._claims.clear()
        self._service_keys.clear()
        for key, service in self._services.items():
            self._put_service(key, service)


def _node_ports(service: Service) -> set[tuple[Protocol, int]]:
    return {(port.protocol, port.node_port) for port in service.ports if port.node_port is not None}


def _add(index: dict[Any, tuple[ObjectKey, ...]], at: Any, key: ObjectKey) -> None:
    held = index.get(at, ())
    if key not in held:
        index[at] = (*held, key)


def _drop(index: dict[Any, tuple[ObjectKey, ...]], at: Any, key: ObjectKey) -> None:
    rest = tuple(k for k in index.get(at, ()) if k != key)
    if rest:
        index[at] = rest
    else:
        index.pop(at, None)
