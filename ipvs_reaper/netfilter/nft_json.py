"""Reads `nft -j list ruleset` into the same values as iptables-save: every table's chains, with the base
chains of type nat marked by their hook.

Tables that iptables-nft made show its matches only as opaque `xt` expressions (addrtype, multiport, and even
DNAT's destination); they are read as "may match", and `iptables-nft-save` describes them exactly."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from ipvs_reaper.errors import InputError
from ipvs_reaper.netfilter.rules import (
    Action,
    AnyMatch,
    Chain,
    DestinationMatch,
    FamilyMatch,
    InterfaceMatch,
    LocalDestinationMatch,
    Match,
    OtherMatch,
    PortMatch,
    ProtocolMatch,
    Rule,
    Table,
    Target,
    jump_loop,
    network,
)
from ipvs_reaper.values import IPAddress

_VERDICTS = {"accept": Action.ACCEPT, "drop": Action.DROP, "reject": Action.DROP, "return": Action.RETURN}
_L4 = ("tcp", "udp", "sctp")
_IPTABLES_TABLES = {"nat", "filter", "mangle", "raw", "security"}


class _ExprError(Exception):
    pass


def _show(value: Any) -> str:
    """An expression's value as nft prints it, near enough for a person to recognise the rule."""
    if isinstance(value, dict):
        if isinstance(value.get("set"), list):
            return "{ " + ", ".join(_show(v) for v in value["set"]) + " }"
        if isinstance(value.get("concat"), list):
            return " . ".join(_show(v) for v in value["concat"])
        if "range" in value and isinstance(value["range"], list):
            return "-".join(_show(v) for v in value["range"])
        if "prefix" in value and isinstance(value["prefix"], dict):
            return f"{value['prefix'].get('addr')}/{value['prefix'].get('len')}"
        if "payload" in value and isinstance(value["payload"], dict):
            return f"{value['payload'].get('protocol', '')} {value['payload'].get('field', '')}".strip()
        if "meta" in value and isinstance(value["meta"], dict):
            return f"meta {value['meta'].get('key')}"
        if "fib" in value and isinstance(value["fib"], dict):
            listed = value["fib"].get("flags")
            flags = " . ".join(str(f) for f in listed) if isinstance(listed, list) else ""
            return f"fib {flags} {value['fib'].get('result')}"
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return " . ".join(_show(v) for v in value)
    return str(value)


def _elements(right: Any) -> list[Any]:
    if isinstance(right, dict) and isinstance(right.get("set"), list):
        return list(right["set"])
    return [right]


def _port_ranges(right: Any) -> tuple[tuple[int, int], ...]:
    ranges = []
    for element in _elements(right):
        if (
            isinstance(element, dict)
            and isinstance(element.get("range"), list)
            and len(element["range"]) == 2
        ):
            low, high = element["range"]
        else:
            low = high = element
        if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 65535 for p in (low, high)):
            raise _ExprError(f"{_show(right)} is not a port or port set")
        ranges.append((low, high))
    return tuple(ranges)


def _networks(right: Any) -> tuple[Any, ...]:
    nets = []
    for element in _elements(right):
        try:
            if isinstance(element, str):
                nets.append(network(element))
            elif isinstance(element, dict) and isinstance(element.get("prefix"), dict):
                nets.append(network(f"{element['prefix'].get('addr')}/{element['prefix'].get('len')}"))
            else:
                raise _ExprError(f"{_show(element)}")
        except ValueError:
            raise _ExprError(f"{_show(element)} is not an address or prefix") from None
    return tuple(nets)


class _Lookups:
    """The named sets and maps of one table (`ip daddr @addrs`, `vmap @ports`, `dnat to ... map @m`), with
    the elements the listing shows."""

    def __init__(self, definitions: Mapping[str, Mapping[str, Any]]) -> None:
        self._definitions = definitions

    def elements(self, reference: str) -> list[Any] | None:
        """A named set's or map's elements; None when the table defines no such name or the listing does not
        show its elements."""
        found = self._definitions.get(reference.removeprefix("@"))
        if found is None:
            return None
        # A set listed without "elem" is empty, or listed tersely (`nft -j -t`): which, the JSON cannot say.
        elements = found.get("elem")
        return [_unwrap(e) for e in elements] if isinstance(elements, list) else None


def _unwrap(element: Any) -> Any:
    """An element with options (`{"elem": {"val": 80, "timeout": 30}}`) is its value."""
    if isinstance(element, dict) and isinstance(element.get("elem"), dict) and "val" in element["elem"]:
        return element["elem"]["val"]
    if isinstance(element, list):
        return [_unwrap(e) for e in element]
    return element


def _dependencies(left: Any) -> list[Match]:
    """What nft checks before it compares a payload field: the protocol (`tcp dport` is TCP) or the family
    (`ip daddr` is IPv4). They hold whatever the operator: `tcp dport != 80` never matches a UDP packet, and
    `ip daddr != 10.0.0.1` never an IPv6 one."""
    if isinstance(left, dict) and isinstance(left.get("concat"), list):
        return [m for part in left["concat"] for m in _dependencies(part)]
    payload = left.get("payload") if isinstance(left, dict) else None
    protocol = payload.get("protocol") if isinstance(payload, dict) else None
    if protocol in _L4:
        return [ProtocolMatch(frozenset({str(protocol)}), False, str(protocol))]
    if protocol in ("ip", "ip6"):
        return [FamilyMatch(4 if protocol == "ip" else 6, str(protocol))]
    return []


def _match(body: Mapping[str, Any], lookups: _Lookups) -> list[Match]:
    op, left, right = body.get("op", "=="), body.get("left"), body.get("right")
    if not isinstance(op, str):
        raise _ExprError(f"{_show(op)} is not a match operator")
    text = f"{_show(left)} {'' if op in ('==', 'in') else op + ' '}{_show(right)}"
    dependencies = _dependencies(left)
    if op not in ("==", "!=", "in"):
        return [*dependencies, OtherMatch(text)]
    negate = op == "!="
    if isinstance(right, str) and right.startswith("@"):
        elements = lookups.elements(right)
        if elements is None:
            # Not defined here, or listed without its elements (`nft -j -t`): its members are unknown.
            return [*dependencies, OtherMatch(f"{text} (a set whose elements the listing does not show)")]
        right = {"set": elements}
    if isinstance(left, dict) and isinstance(left.get("concat"), list):
        alternatives = tuple(
            tuple(_concat_element(left["concat"], element, lookups)) for element in _elements(right)
        )
        return [*dependencies, AnyMatch(alternatives, negate, text)]
    return [*dependencies, _value_match(left, right, negate, text)]


def _value_match(left: Any, right: Any, negate: bool, text: str) -> Match:
    """The comparison itself, once its dependencies are checked."""
    if isinstance(left, dict) and isinstance(left.get("payload"), dict):
        protocol, field = left["payload"].get("protocol"), left["payload"].get("field")
        if field == "dport" and protocol in (*_L4, "th"):
            return PortMatch(_port_ranges(right), negate, text)
        if field == "daddr" and protocol in ("ip", "ip6"):
            if any(isinstance(e, dict) and "range" in e for e in _elements(right)):
                return OtherMatch(text)
            return DestinationMatch(_networks(right), negate, text)
    if isinstance(left, dict) and isinstance(left.get("meta"), dict):
        key = left["meta"].get("key")
        if key == "l4proto":
            return ProtocolMatch(frozenset(str(e) for e in _elements(right)), negate, text)
        if key == "nfproto" and right in ("ipv4", "ipv6"):
            family = 4 if right == "ipv4" else 6
            return FamilyMatch(10 - family if negate else family, text)
        if key in ("iifname", "oifname", "iif", "oif"):
            direction = "in" if key.startswith("i") else "out"
            return InterfaceMatch(direction, tuple(str(e) for e in _elements(right)), negate, text)
    if isinstance(left, dict) and isinstance(left.get("fib"), dict):
        fib = left["fib"]
        flags = fib.get("flags") if isinstance(fib.get("flags"), list) else []
        if fib.get("result") == "type" and "daddr" in flags:
            types = frozenset(str(e).upper() for e in _elements(right))
            return LocalDestinationMatch(types, negate, text, per_interface="iif" in flags or "oif" in flags)
    return OtherMatch(text)


def _concat_element(keys: list[Any], element: Any, lookups: _Lookups) -> list[Match]:
    """`ip daddr . tcp dport` against one element `10.0.0.1 . 80`: each part's comparison (the parts'
    dependencies are the caller's, outside any negation)."""
    values = element.get("concat") if isinstance(element, dict) else None
    if not isinstance(values, list) or len(values) != len(keys):
        raise _ExprError(f"{_show(element)} does not fit the key {_show(keys)}")
    return [
        _value_match(key, value, False, f"{_show(key)} {_show(value)}")
        for key, value in zip(keys, values, strict=True)
    ]


def _key_matches(key: Any, value: Any, lookups: _Lookups) -> list[Match]:
    """A map's or verdict map's key equal to one element's key."""
    if isinstance(key, dict) and isinstance(key.get("concat"), list):
        return [*_dependencies(key), *_concat_element(key["concat"], value, lookups)]
    return _match({"op": "==", "left": key, "right": value}, lookups)


def _verdict(value: Any, chains: set[str]) -> Target:
    if isinstance(value, dict) and len(value) == 1:
        ((kind, body),) = value.items()
        if kind in _VERDICTS:
            return Target(_VERDICTS[kind])
        if kind == "continue":
            return Target(Action.CONTINUE)
        name = body.get("target") if isinstance(body, dict) else None
        if kind in ("jump", "goto") and isinstance(name, str) and name in chains:
            return Target(Action.JUMP if kind == "jump" else Action.GOTO, chain=name)
    return Target(Action.UNKNOWN, why=f"verdict {_show(value)}")


def _map_entries(lookup: Any, lookups: _Lookups) -> list[tuple[Any, Any]] | None:
    """(key, value) of a `map`/`vmap` lookup's data: its own elements or a named map's; None when the
    table has no such map."""
    data = lookup.get("data") if isinstance(lookup, dict) else None
    if isinstance(data, str) and data.startswith("@"):
        found = lookups.elements(data)
        if found is None:
            return None
        entries = found
    elif isinstance(data, dict) and isinstance(data.get("set"), list):
        entries = [_unwrap(e) for e in data["set"]]
    else:
        return None
    if not all(isinstance(e, list) and len(e) == 2 for e in entries):
        raise _ExprError(f"{_show(data)} is not a map's elements")
    return [(e[0], e[1]) for e in entries]


def _address(value: Any) -> IPAddress:
    """An address, or the first of a range (`dnat to 10.0.0.1-10.0.0.3`: the kernel picks one of them)."""
    if isinstance(value, dict) and isinstance(value.get("range"), list) and value["range"]:
        value = value["range"][0]
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise _ExprError(f"{_show(value)} is not an address") from None


def _port(value: Any) -> int:
    """A port, or the first of a range."""
    if isinstance(value, dict) and isinstance(value.get("range"), list) and value["range"]:
        value = value["range"][0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    raise _ExprError(f"{_show(value)} is not a port")


def _is_range(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("range"), list)


def _dnat_choices(body: Any, lookups: _Lookups) -> list[tuple[list[Match], Target, str]]:
    """What a `dnat` may do, with the words that show it: one target, or one per element of the map its
    address or port is looked up in (a packet whose key is in no element is not translated: the rule goes
    on to the next). Raises _ExprError for what it cannot read."""
    if not isinstance(body, dict):
        raise _ExprError("dnat without a destination")
    family: list[Match] = []
    if body.get("family") in ("ip", "ip6"):
        # In an `inet` table `dnat ip to` acts on IPv4 packets only; the others go on untouched.
        family = [FamilyMatch(4 if body["family"] == "ip" else 6, f"dnat {body['family']}")]
    addr, port = body.get("addr"), body.get("port")
    plain_addr = addr is None or isinstance(addr, str) or _is_range(addr)
    plain_port = port is None or isinstance(port, int) or _is_range(port)
    if isinstance(port, dict) and not _is_range(port) and plain_addr:
        # `dnat to 10.0.0.1 : tcp dport map { ... }`: the port looked up, the address fixed.
        lookup, fixed = port.get("map"), (_address(addr) if addr is not None else None)

        def target(value: Any) -> Target:
            return Target(Action.DNAT, address=fixed, port=_port(value))

    elif isinstance(addr, dict) and not _is_range(addr) and plain_port:
        # `dnat to tcp dport map { 80 : 10.0.0.1 . 8080 }`: the address (and port) looked up.
        lookup, fixed_port = addr.get("map"), (_port(port) if port is not None else None)

        def target(value: Any) -> Target:
            parts = value.get("concat") if isinstance(value, dict) else None
            if isinstance(parts, list) and len(parts) == 2:
                return Target(Action.DNAT, address=_address(parts[0]), port=_port(parts[1]))
            return Target(Action.DNAT, address=_address(value), port=fixed_port)

    elif plain_addr and plain_port and (addr is not None or port is not None):
        plain = Target(
            Action.DNAT,
            address=_address(addr) if addr is not None else None,
            port=_port(port) if port is not None else None,
        )
        return [(family, plain, f"dnat to {plain.destination()}")]
    else:
        raise _ExprError(f"dnat to {_show(addr)} port {_show(port)}")
    entries = _map_entries(lookup, lookups)
    if entries is None:
        raise _ExprError(
            f"dnat to {_show(addr if isinstance(addr, dict) else port)}: a map this listing does not show "
            "the elements of"
        )
    key = lookup.get("key") if isinstance(lookup, dict) else None
    choices = []
    for k, v in entries:
        chosen = target(v)
        shown = f"dnat to {_show(key)} map {{ {_show(k)} : {chosen.destination()} }}"
        choices.append(([*family, *_key_matches(key, k, lookups)], chosen, shown))
    return choices


# Statements that neither change where a packet goes nor end its traversal.
_PASSING = frozenset(
    {"counter", "log", "limit", "quota", "notrack", "set", "map", "masquerade", "snat", "meter", "dup",
     "flow", "secmark", "ct helper", "ct timeout", "ct expectation", "synproxy"}
)  # fmt: skip
_REWRITTEN_FIELDS = frozenset({"daddr", "dport"})
_PASSING_XT_TARGETS = frozenset({"MARK", "CONNMARK", "LOG", "NFLOG", "MASQUERADE", "SNAT", "TRACE", "CT"})


def _rule(
    expressions: list[Any], chains: set[str], lookups: _Lookups
) -> list[tuple[list[Match], Target, str]]:
    """One nft rule as the rules it amounts to: usually one; a verdict map or a map lookup in a `dnat` gives
    one per element, each with the key's match (a key matches at most one element)."""
    matches: list[Match] = []
    words: list[str] = []
    for expression in expressions:
        if not isinstance(expression, dict) or len(expression) != 1:
            raise _ExprError(f"{_show(expression)} is not an nft expression")
        ((kind, body),) = expression.items()
        if kind == "match" and isinstance(body, dict):
            try:
                found = _match(body, lookups)
            except _ExprError as error:
                # A match it cannot read may or may not hold; the rule is still read.
                found = [OtherMatch(f"{_show(body.get('left'))} ... (not understood: {error})")]
            matches.extend(found)
            words.append(found[-1].text)  # `tcp dport 80` says the protocol itself
            continue
        try:
            statement = _statement(kind, body, expression, chains, lookups, matches, words)
        except _ExprError as error:
            # A statement it cannot read: what reaches it (its matches say what) may be taken anywhere.
            why = str(error)
            return [
                (matches, Target(Action.UNKNOWN, why=why), " ".join([*words, f"{kind} (not understood)"]))
            ]
        if statement is not None:
            return statement
    return [(matches, Target(Action.CONTINUE), " ".join(words))]


def _statement(
    kind: str,
    body: Any,
    expression: Any,
    chains: set[str],
    lookups: _Lookups,
    matches: list[Match],
    words: list[str],
) -> list[tuple[list[Match], Target, str]] | None:
    """A statement after the rule's matches: the rules it amounts to when it ends the rule (a verdict, a
    translation), None when the rule goes on (a counter, a log, an xt match: appended to `matches`)."""
    if kind in ("jump", "goto"):
        target = _verdict(expression, chains)
        if target.action is Action.UNKNOWN:
            raise _ExprError(f"{kind} to {_show(body)}, which is not a chain of this table")
        return [(matches, target, " ".join([*words, f"{kind} {target.chain}"]))]
    if kind in _VERDICTS or kind == "continue":
        return [(matches, _verdict(expression, chains), " ".join([*words, kind]))]
    if kind == "dnat":
        return [
            (matches + extra, target, " ".join([*words, shown]))
            for extra, target, shown in _dnat_choices(body, lookups)
        ]
    if kind == "redirect":
        port = body.get("port") if isinstance(body, dict) else None
        if port is not None and not isinstance(port, int):
            raise _ExprError(f"redirect to {_show(port)}")
        shown = "redirect" + (f" to :{port}" if port else "")
        return [(matches, Target(Action.REDIRECT, port=port), " ".join([*words, shown]))]
    if kind == "vmap" and isinstance(body, dict):
        entries = _map_entries(body, lookups)
        shown = " ".join([*words, f"{_show(body.get('key'))} vmap"])
        if entries is None:
            raise _ExprError(
                f"vmap {_show(body.get('data'))}: a map this listing does not show the elements of"
            )
        return [
            (
                matches + _key_matches(body.get("key"), k, lookups),
                _verdict(v, chains),
                f"{shown} {{ {_show(k)} }}",
            )
            for k, v in entries
        ]
    if kind == "xt" and isinstance(body, dict):
        name = str(body.get("name"))
        if body.get("type") == "target":
            # nft shows an iptables target without its options: a DNAT's destination is not in the listing
            # (it may be a no-op, or the service's own endpoint), so what it does is unknown.
            harmless = name in _PASSING_XT_TARGETS
            target = (
                Target(Action.CONTINUE) if harmless else Target(Action.UNKNOWN, why=f"iptables target {name}")
            )
            return [(matches, target, " ".join([*words, f"xt target {name}"]))]
        matches.append(OtherMatch(f"xt match {name}"))
        words.append(f"xt match {name}")
        return None
    if kind == "mangle" and isinstance(body, dict):
        key = body.get("key")
        payload = key.get("payload") if isinstance(key, dict) else None
        field = payload.get("field") if isinstance(payload, dict) else None
        if isinstance(field, str) and field in _REWRITTEN_FIELDS:
            # A stateless rewrite of the destination, in any chain: IPVS never sees the address it was sent
            # to. Where it goes the doctor does not follow: it may take the traffic.
            why = f"{_show(key)} set {_show(body.get('value'))}"
            return [(matches, Target(Action.UNKNOWN, why=why, stateless=True), " ".join([*words, why]))]
        words.append("mangle")
        return None
    if kind in _PASSING:
        words.append(kind)
        return None
    raise _ExprError(f"the statement {kind!r}")


def parse_nft_json(text: str, source: str) -> list[Table]:
    """Every table of `nft -j list ruleset`. Raises InputError naming the file and the rule."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{source}: not valid JSON: line {error.lineno}: {error.msg}") from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply to be `nft -j list ruleset` output") from None
    objects = document.get("nftables") if isinstance(document, dict) else None
    if not isinstance(objects, list):
        raise InputError(f'{source}: expected {{"nftables": [...]}} (the output of `nft -j list ruleset`)')
    chain_info: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    named: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    rules: dict[tuple[str, str, str], list[Rule]] = {}
    raw_rules = []
    for index, entry in enumerate(objects):
        if not isinstance(entry, dict):
            raise InputError(f"{source}: nftables[{index}] is not an object")
        if isinstance(entry.get("table"), dict):
            table = entry["table"]
            chain_info.setdefault((str(table.get("family")), str(table.get("name"))), {})
        elif isinstance(entry.get("chain"), dict):
            chain = entry["chain"]
            key = (str(chain.get("family")), str(chain.get("table")))
            chain_info.setdefault(key, {})[str(chain.get("name"))] = chain
        elif isinstance(entry.get("set"), dict) or isinstance(entry.get("map"), dict):
            definition = entry["set"] if isinstance(entry.get("set"), dict) else entry["map"]
            key = (str(definition.get("family")), str(definition.get("table")))
            named.setdefault(key, {})[str(definition.get("name"))] = definition
        elif isinstance(entry.get("rule"), dict):
            raw_rules.append((index, entry["rule"]))
    for index, rule in raw_rules:
        key = (str(rule.get("family")), str(rule.get("table")))
        chain_name = str(rule.get("chain"))
        chains = chain_info.get(key, {})
        if chain_name not in chains or not isinstance(rule.get("expr"), list):
            raise InputError(f"{source}: nftables[{index}]: a rule of no known chain, or without expressions")
        comment = rule.get("comment") if isinstance(rule.get("comment"), str) else ""
        suffix = f' comment "{comment}"' if comment else ""
        try:
            read = _rule(rule["expr"], set(chains), _Lookups(named.get(key, {})))
        except RecursionError:
            raise InputError(f"{source}: nftables[{index}]: nested too deeply to be an nft rule") from None
        except _ExprError as error:
            # One rule it cannot read: what reaches it may be taken anywhere; the rest is still read.
            why = f"nftables[{index}]: {error}"
            read = [([], Target(Action.UNKNOWN, why=why), f"(rule nftables[{index}], not understood)")]
        rules.setdefault((*key, chain_name), []).extend(
            Rule(tuple(matches), target, text + suffix, comment or "", line=None)
            for matches, target, text in read
        )
    tables = []
    for (family, name), chains in chain_info.items():
        made = {
            chain_name: Chain(
                chain_name,
                tuple(rules.get((family, name, chain_name), ())),
                hook=str(info["hook"]) if info.get("hook") else None,
                nat=info.get("type") == "nat",
                priority=info["prio"] if isinstance(info.get("prio"), int) else -100,
                policy=str(info.get("policy", "accept")),
            )
            for chain_name, info in chains.items()
        }
        iptables_made = (
            name in _IPTABLES_TABLES
            and family in ("ip", "ip6")
            and (
                any(c.isupper() for c in made) or any("xt " in r.text for c in made.values() for r in c.rules)
            )
        )
        loop = jump_loop(made)
        if loop is not None:
            raise InputError(
                f"{source}: table {family} {name}: chain {loop[0]} jumps back to itself ({' -> '.join(loop)})"
            )
        backend = "iptables-nft" if iptables_made else "nftables"
        stateless = any(r.target.stateless for c in made.values() for r in c.rules)
        tables.append(Table(backend, family, name, made, source, opaque=iptables_made, stateless=stateless))
    return tables
