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
    Chain,
    DestinationMatch,
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


def _match(body: Mapping[str, Any]) -> list[Match]:
    op, left, right = body.get("op", "=="), body.get("left"), body.get("right")
    if not isinstance(op, str):
        raise _ExprError(f"{_show(op)} is not a match operator")
    text = f"{_show(left)} {'' if op in ('==', 'in') else op + ' '}{_show(right)}"
    if op not in ("==", "!=", "in"):
        return [OtherMatch(text)]
    negate = op == "!="
    if isinstance(right, str) and right.startswith("@"):
        return [OtherMatch(text)]  # a named set: its elements are not in the rule
    if isinstance(left, dict) and isinstance(left.get("payload"), dict):
        protocol, field = left["payload"].get("protocol"), left["payload"].get("field")
        if field == "dport" and protocol in (*_L4, "th"):
            matches: list[Match] = [PortMatch(_port_ranges(right), negate, text)]
            if protocol in _L4:
                # `tcp dport` also says the packet is TCP, whatever the port.
                matches.insert(0, ProtocolMatch(frozenset({protocol}), False, protocol))
            return matches
        if field == "daddr" and protocol in ("ip", "ip6"):
            if isinstance(right, dict) and "range" in right:
                return [OtherMatch(text)]
            return [DestinationMatch(_networks(right), negate, text)]
    if isinstance(left, dict) and isinstance(left.get("meta"), dict) and left["meta"].get("key") == "l4proto":
        names = frozenset(str(e) for e in _elements(right))
        return [ProtocolMatch(names, negate, text)]
    if isinstance(left, dict) and isinstance(left.get("fib"), dict):
        fib = left["fib"]
        flags = fib.get("flags") if isinstance(fib.get("flags"), list) else []
        if fib.get("result") == "type" and "daddr" in flags:
            types = frozenset(str(e).upper() for e in _elements(right))
            return [
                LocalDestinationMatch(types, negate, text, per_interface="iif" in flags or "oif" in flags)
            ]
    return [OtherMatch(text)]


def _dnat_target(body: Any) -> Target:
    if not isinstance(body, dict):
        return Target(Action.DNAT)
    address: IPAddress | None = None
    if isinstance(body.get("addr"), str):
        try:
            address = ipaddress.ip_address(body["addr"])
        except ValueError:
            raise _ExprError(f"dnat to {body['addr']!r}: not an address") from None
    port = body.get("port")
    return Target(Action.DNAT, address=address, port=port if isinstance(port, int) else None)


def _rule(expressions: list[Any], chains: set[str]) -> tuple[list[Match], Target, list[str]]:
    matches: list[Match] = []
    target = Target(Action.CONTINUE)
    words: list[str] = []
    for expression in expressions:
        if not isinstance(expression, dict) or len(expression) != 1:
            raise _ExprError(f"{_show(expression)} is not an nft expression")
        ((kind, body),) = expression.items()
        if kind == "match" and isinstance(body, dict):
            found = _match(body)
            matches.extend(found)
            words.append(found[-1].text)  # `tcp dport 80` says the protocol itself
        elif kind in ("jump", "goto") and isinstance(body, dict):
            name = body.get("target")
            if not isinstance(name, str) or name not in chains:
                raise _ExprError(f"{kind} to {name!r}, which is not a chain of this table")
            target = Target(Action.JUMP if kind == "jump" else Action.GOTO, chain=str(name))
            words.append(f"{kind} {name}")
        elif kind in _VERDICTS:
            target = Target(_VERDICTS[kind])
            words.append(kind)
        elif kind == "dnat":
            target = _dnat_target(body)
            words.append(f"dnat to {target.destination()}")
        elif kind == "redirect":
            port = body.get("port") if isinstance(body, dict) else None
            target = Target(Action.REDIRECT, port=port if isinstance(port, int) else None)
            words.append("redirect" + (f" to :{port}" if port else ""))
        elif kind == "xt" and isinstance(body, dict):
            name = str(body.get("name"))
            if body.get("type") == "target":
                action = {"DNAT": Action.DNAT, "REDIRECT": Action.REDIRECT}.get(name, Action.CONTINUE)
                target = Target(action)
            else:
                matches.append(OtherMatch(f"xt match {name}"))
            words.append(f"xt {body.get('type')} {name}")
        elif kind == "vmap":
            # A verdict map branches on data the rule does not show: each verdict may apply.
            matches.append(OtherMatch(f"vmap {_show(body)}"))
            target = Target(Action.CONTINUE)
            words.append("vmap")
        elif kind != "counter":
            words.append(kind)
    return matches, target, words


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
        elif isinstance(entry.get("rule"), dict):
            raw_rules.append((index, entry["rule"]))
    for index, rule in raw_rules:
        key = (str(rule.get("family")), str(rule.get("table")))
        chain_name = str(rule.get("chain"))
        chains = chain_info.get(key, {})
        if chain_name not in chains or not isinstance(rule.get("expr"), list):
            raise InputError(f"{source}: nftables[{index}]: a rule of no known chain, or without expressions")
        try:
            matches, target, words = _rule(rule["expr"], set(chains))
        except RecursionError:
            raise InputError(f"{source}: nftables[{index}]: nested too deeply to be an nft rule") from None
        except _ExprError as error:
            raise InputError(
                f"{source}: nftables[{index}] (table {key[0]} {key[1]}, chain {chain_name}): {error}"
            ) from None
        comment = rule.get("comment") if isinstance(rule.get("comment"), str) else ""
        text = " ".join(words) + (f' comment "{comment}"' if comment else "")
        rules.setdefault((*key, chain_name), []).append(
            Rule(tuple(matches), target, text, comment or "", line=None)
        )
    tables = []
    for (family, name), chains in chain_info.items():
        made = {
            chain_name: Chain(
                chain_name,
                tuple(rules.get((family, name, chain_name), ())),
                hook=str(info["hook"]) if info.get("hook") else None,
                nat=info.get("type") == "nat",
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
        tables.append(Table(backend, family, name, made, source, opaque=iptables_made))
    return tables
