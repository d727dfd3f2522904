"""Where the nat hooks send a packet: every rule on the way judged, jumps and gotos followed, RETURN and
ACCEPT honoured, so a DNAT is judged by the whole path that reaches it and not by its own line.

Each nat base chain at a hook is walked on its own: netfilter runs every nat chain registered at a hook until
one of them sets up a translation, so kube-proxy's ACCEPT in one table does not stop another table's DNAT."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

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

    @property
    def may_rewrite(self) -> bool:
        return self.rewrites or self.rule.target.action is Action.UNKNOWN

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


def _unless(rule: Rule, unsure: tuple[str, ...], what: str) -> str:
    """What must not have happened first, for a person: the matches that decide it and the rule."""
    where = f"line {rule.line}" if rule.line is not None else f"`{rule.text}`"
    if unsure:
        return f"unless {' '.join(unsure)} ({what} at {where})"
    return f"unless {what} at {where}"


class _Walker:
    def __init__(self, table: Table, hook: str, packet: Packet) -> None:
        self.table, self.hook, self.packet = table, hook, packet
        self.found: list[Outcome] = []
        # Terminal rules that may have applied before: whatever comes later needs them not to have.
        self.unless: list[str] = []
        self.steps = 0

    def _count(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise WalkTooLong(
                f"{self.table.source}: following one packet through {self.table.label} takes more than "
                f"{MAX_STEPS} rule evaluations; rules this tangled cannot be judged"
            )

    def chain(self, chain: Chain, path: tuple[Step, ...], conditions: tuple[str, ...]) -> _End:
        """`conditions`: what must hold to be here, and, as the chain goes on, what must not have happened in
        it (a RETURN or a goto that may have applied ends this chain's run for some packets)."""
        if len(path) > _MAX_DEPTH:
            return _End.FELL_THROUGH
        # Some packets may have left this chain early (a RETURN or goto that may apply, a rule that cannot be
        # read): a certain terminal rule later stops only the others, so this chain cannot say STOPPED.
        partial = False
        for rule in chain.rules:
            self._count()
            result, unsure = _judge(rule, self.packet)
            if result is Truth.FALSE:
                continue
            here = (*path, Step(chain.name, rule))
            needs = (*conditions, *unsure)
            action = rule.target.action
            if action is Action.UNKNOWN:
                # It may rewrite (an outcome that is never certain), end the traversal, or return.
                shown = f"if the rule it cannot read ({rule.target.why}) rewrites it"
                self.found.append(Outcome(self.table, self.hook, here, (*self.unless, *needs, shown)))
                self.unless.append(_unless(rule, unsure, "an unreadable rule ended the traversal"))
                conditions = (*conditions, _unless(rule, unsure, "an unreadable rule returned"))
                partial = True
                continue
            if action in TERMINAL:
                self.found.append(Outcome(self.table, self.hook, here, (*self.unless, *needs)))
                if needs:
                    # What decided whether it applied: its own matches, or those of the jumps that led here.
                    decisive = unsure or tuple(c for c in needs if not c.startswith("unless "))
                    self.unless.append(_unless(rule, decisive, action.value))
                if result is Truth.TRUE:
                    return _End.FELL_THROUGH if partial else _End.STOPPED
            elif action in (Action.JUMP, Action.GOTO):
                called = self.table.chains.get(rule.target.chain)
                end = self.chain(called, here, needs) if called is not None else _End.FELL_THROUGH
                if result is Truth.TRUE:
                    if action is Action.GOTO:
                        # A goto's chain returns to this chain's caller: nothing after it here runs.
                        return _End.FELL_THROUGH if partial else end
                    if end is _End.STOPPED:
                        return _End.FELL_THROUGH if partial else _End.STOPPED
                elif action is Action.GOTO:
                    # Taken, the goto skips the rest of this chain, and its chain may run out.
                    conditions = (*conditions, _unless(rule, unsure, f"goto {rule.target.chain}"))
                    partial = partial or end is not _End.STOPPED
            elif action is Action.RETURN:
                if result is Truth.TRUE:
                    return _End.FELL_THROUGH
                conditions = (*conditions, _unless(rule, unsure, "return"))
                partial = True
        return _End.FELL_THROUGH


@dataclass(frozen=True, slots=True)
class ChainWalk:
    """One nat base chain's walk: the terminal rules the packet can reach, in order, and whether it surely
    reaches one of them (it cannot run off the end of the chain and go on untranslated)."""

    hook: str
    chain_table: Table
    chain: Chain
    outcomes: tuple[Outcome, ...]
    ends_in_one: bool

    @property
    def may_drop(self) -> bool:
        """Some packet may be dropped: a DROP on its way, or the policy for one that runs off the chain."""
        dropped = any(o.rule.target.action is Action.DROP for o in self.outcomes)
        return dropped or (self.chain.policy == "drop" and not self.ends_in_one)

    def surely_rewritten(self) -> bool:
        """Whichever way the unjudgeable matches go, the packet is rewritten."""
        if self.chain_table.family_guessed:
            return False
        return self.ends_in_one and bool(self.outcomes) and all(o.rewrites for o in self.outcomes)


def walk_chains(tables: Iterable[Table], packet: Packet) -> Iterator[ChainWalk]:
    """The packet through each nat base chain at PREROUTING and OUTPUT; a chain's walk ends at its first
    certain terminal rule. Other base chains at those hooks (filter, route) can only rewrite statelessly
    (`ip daddr set`): their walks keep those rules alone, each possible at most."""
    for table in tables:
        if packet.family not in table.families():
            continue
        for chain in table.chains.values():
            if not chain.nat and table.stateless and chain.hook in NAT_HOOKS and chain.hook is not None:
                at_hook = replace(packet, hook=chain.hook)
                walker = _Walker(table, chain.hook, at_hook)
                walker.chain(chain, (), ())
                rewrites = tuple(o for o in walker.found if o.rule.target.stateless)
                if rewrites:
                    yield ChainWalk(chain.hook, table, chain, rewrites, False)
            elif chain.nat and chain.hook in NAT_HOOKS:
                at_hook = replace(packet, hook=chain.hook)
                walker = _Walker(table, chain.hook, at_hook)
                doubt = (f"if {table.source} is IPv{packet.family} rules (no header says)",)
                end = walker.chain(chain, (), doubt if table.family_guessed else ())
                yield ChainWalk(chain.hook, table, chain, tuple(walker.found), end is _End.STOPPED)


def walk(tables: Iterable[Table], packet: Packet) -> Iterator[Outcome]:
    """Every terminal rule the packet can reach, over all the nat base chains (see walk_chains)."""
    for chain_walk in walk_chains(tables, packet):
        yield from chain_walk.outcomes
