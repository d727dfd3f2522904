"""Where the nat hooks send a packet: every rule on the way judged, jumps and gotos followed, RETURN and
ACCEPT honoured, so a DNAT is judged by the whole path that reaches it and not by its own line.

Each nat base chain at a hook is walked on its own: netfilter runs every nat chain registered at a hook until
one of them sets up a translation, so kube-proxy's ACCEPT in one table does not stop another table's DNAT."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ipvs_reaper.errors import InputError
from ipvs_reaper.netfilter.rules import TERMINAL, Action, Chain, Packet, Rule, Table, Truth

NAT_HOOKS = ("prerouting", "output")
_MAX_DEPTH = 64  # the kernel refuses deeper jump chains than this anyway
# Rules judged for one packet in one base chain. A real node's walk is a few hundred; rules that branch on
# matches that cannot be judged, again and again, could take exponentially many.
MAX_STEPS = 200_000


class WalkTooLong(InputError):
    """Rules too tangled to follow one packet through."""


@dataclass(frozen=True, slots=True)
class Step:
    chain: str
    rule: Rule


@dataclass(frozen=True, slots=True)
class Outcome:
    """A terminal rule the packet can reach: DNAT, REDIRECT, ACCEPT or DROP."""

    table: Table
    hook: str
    path: tuple[Step, ...]  # the jumps from the base chain, then the terminal rule
    conditions: tuple[str, ...]  # what must also hold for it (matches that cannot be judged here)

    @property
    def rule(self) -> Rule:
        return self.path[-1].rule

    @property
    def certain(self) -> bool:
        return not self.conditions

    @property
    def rewrites(self) -> bool:
        return self.rule.target.action in (Action.DNAT, Action.REDIRECT)

    def chain_path(self) -> str:
        return " -> ".join([self.path[0].chain, *(s.rule.target.chain for s in self.path[:-1])])


class _End(enum.Enum):
    FELL_THROUGH = 0  # the chain ran out, or returned: the caller goes on
    STOPPED = 1  # the packet's traversal of this table ended, for every packet that reached the call


def _judge(rule: Rule, packet: Packet) -> tuple[Truth, tuple[str, ...]]:
    unsure: list[str] = []
    for match in rule.matches:
        result = match.evaluate(packet)
        if result is Truth.FALSE:
            return Truth.FALSE, ()
        if result is Truth.MAYBE:
            unsure.append(match.text)
    return (Truth.MAYBE if unsure else Truth.TRUE), tuple(unsure)


class _Walker:
    def __init__(self, table: Table, hook: str, packet: Packet) -> None:
        self.table, self.hook, self.packet = table, hook, packet
        self.found: list[Outcome] = []
        # Terminal rules that may have applied before: whatever comes later needs them not to have.
        self.unless: list[str] = []
        self.steps = 0

    def chain(self, chain: Chain, path: tuple[Step, ...], conditions: tuple[str, ...]) -> _End:
        if len(path) > _MAX_DEPTH:
            return _End.FELL_THROUGH
        for rule in chain.rules:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise WalkTooLong(
                    f"{self.table.source}: following one packet through {self.table.label} takes more than "
                    f"{MAX_STEPS} rule evaluations; rules this tangled cannot be judged"
                )
            result, unsure = _judge(rule, self.packet)
            if result is Truth.FALSE:
                continue
            here = (*path, Step(chain.name, rule))
            needs = (*conditions, *unsure)
            action = rule.target.action
            if action in TERMINAL:
                self.found.append(Outcome(self.table, self.hook, here, (*self.unless, *needs)))
                if needs:
                    self.unless.append(f"unless {' '.join(needs)} ({action.value} first)")
            elif action in (Action.JUMP, Action.GOTO):
                called = self.table.chains.get(rule.target.chain)
                end = self.chain(called, here, needs) if called is not None else _End.FELL_THROUGH
                if action is Action.GOTO and result is Truth.TRUE:
                    # A goto's chain returns to this chain's caller: nothing after it here runs.
                    return end
                if end is _End.STOPPED and result is Truth.TRUE:
                    return _End.STOPPED
                continue
            elif action is Action.RETURN and result is Truth.TRUE:
                return _End.FELL_THROUGH
            if action in TERMINAL and result is Truth.TRUE:
                return _End.STOPPED
        return _End.FELL_THROUGH


@dataclass(frozen=True, slots=True)
class ChainWalk:
    """One nat base chain's walk: the terminal rules the packet can reach, in order, and whether it surely
    reaches one of them (it cannot run off the end of the chain and go on untranslated)."""

    outcomes: tuple[Outcome, ...]
    ends_in_one: bool

    def surely_rewritten(self) -> bool:
        """Whichever way the unjudgeable matches go, the packet is rewritten."""
        return self.ends_in_one and bool(self.outcomes) and all(o.rewrites for o in self.outcomes)


def walk_chains(tables: Iterable[Table], packet: Packet) -> Iterator[ChainWalk]:
    """The packet through each nat base chain at PREROUTING and OUTPUT; a chain's walk ends at its first
    certain terminal rule."""
    for table in tables:
        if packet.family not in table.families():
            continue
        for chain in table.chains.values():
            if chain.nat and chain.hook in NAT_HOOKS:
                walker = _Walker(table, chain.hook, packet)
                end = walker.chain(chain, (), ())
                yield ChainWalk(tuple(walker.found), end is _End.STOPPED)


def walk(tables: Iterable[Table], packet: Packet) -> Iterator[Outcome]:
    """Every terminal rule the packet can reach, over all the nat base chains (see walk_chains)."""
    for chain_walk in walk_chains(tables, packet):
        yield from chain_walk.outcomes
