"""Where the node's NAT rules come from: the save tools of both iptables backends and `nft -j`, run on the
live node (reading only: the tools list tables that exist and load nothing), or files an SRE captured."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ipvs_reaper.errors import InputError
from ipvs_reaper.input_text import read_input_text, source_name
from ipvs_reaper.netfilter.ipsets import IpSet, parse_ipset_save
from ipvs_reaper.netfilter.iptables_save import parse_iptables_save
from ipvs_reaper.netfilter.nft_json import parse_nft_json
from ipvs_reaper.netfilter.rules import Table

# Without `-t nat`: naming a table makes the legacy tool load its module, and the doctor only reads.
_SAVE_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save")
_NFT = ("nft", "-j", "list", "ruleset")
_IPSET = ("ipset", "save")
_TIMEOUT_SECONDS = 20


@dataclass(frozen=True, slots=True)
class RuleSources:
    tables: tuple[Table, ...]
    notes: tuple[str, ...]  # what could not be read, and why
    read_any: bool  # at least one source answered
    # The node's IP sets (`ipset save`), when read: their members, not the cluster state's, decide a rule.
    ipsets: Mapping[str, IpSet] | None = None


def _without_duplicates(tables: list[Table]) -> list[Table]:
    """`nft -j` also lists iptables-nft's tables, without their details: the save tool's reading wins."""
    saved = {(t.family, t.name) for t in tables if t.backend == "iptables-nft" and not t.opaque}
    return [t for t in tables if not (t.opaque and (t.family, t.name) in saved)]


def _run(command: Sequence[str]) -> tuple[str | None, str | None]:
    """(output, None) or (None, why not)."""
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, timeout=_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError:
        return None, f"{command[0]} is not installed"
    except subprocess.TimeoutExpired:
        return None, f"{command[0]} did not answer within {_TIMEOUT_SECONDS} s"
    except OSError as error:
        return None, f"{command[0]}: {error}"
    if done.returncode != 0:
        return None, f"{command[0]} failed (exit {done.returncode}): {done.stderr.strip()[:200]}"
    return done.stdout, None


def read_live_rules() -> RuleSources:
    tables: list[Table] = []
    notes: list[str] = []
    read_any = False
    for tool in _SAVE_TOOLS:
        output, failure = _run([tool])
        if failure is not None:
            notes.append(f"{failure}; its rules are not checked")
            continue
        try:
            tables.extend(parse_iptables_save(output or "", tool))
        except InputError as error:
            notes.append(f"cannot read what {tool} printed: {error}; its rules are not checked")
            continue
        read_any = True
    output, failure = _run(_NFT)
    if failure is not None:
        notes.append(f"{failure}; its rules are not checked")
    else:
        try:
            tables.extend(parse_nft_json(output or '{"nftables": []}', "nft -j"))
            read_any = True
        except InputError as error:
            notes.append(f"cannot read what nft printed: {error}; its rules are not checked")
    ipsets, failure = read_live_ipsets()
    if failure is not None:
        notes.append(failure)
    return RuleSources(tuple(_without_duplicates(tables)), tuple(notes), read_any, ipsets)


def read_live_ipsets(
    loaded: Path = Path("/sys/module/ip_set"),
) -> tuple[Mapping[str, IpSet] | None, str | None]:
    """(the node's IP sets, None), or (None, why not: kube-proxy's sets are then judged from the cluster
    state). No set at all when the ip_set module is not loaded: asking would load it, and the doctor only
    reads."""
    if not loaded.parent.is_dir():
        return None, "no /sys/module to tell whether IP sets exist: kube-proxy's sets judged from the cluster"
    if not loaded.exists():
        return {}, None
    output, failure = _run(_IPSET)
    if failure is not None:
        return None, f"{failure}: kube-proxy's IP sets judged from the cluster state"
    try:
        return parse_ipset_save(output or "", "ipset save"), None
    except InputError as error:
        return None, f"cannot read what ipset printed ({error}): kube-proxy's IP sets judged from the cluster"


def read_rule_files(
    iptables_save: Sequence[str], nft_ruleset: Sequence[str], ipset_save: str | None = None
) -> RuleSources:
    """Captured files; InputError names a file that cannot be read."""
    tables: list[Table] = []
    for path in iptables_save:
        tables.extend(parse_iptables_save(read_input_text(path), source_name(path)))
    for path in nft_ruleset:
        tables.extend(parse_nft_json(read_input_text(path), source_name(path)))
    ipsets = None
    if ipset_save is not None:
        ipsets = parse_ipset_save(read_input_text(ipset_save), source_name(ipset_save))
    return RuleSources(tuple(_without_duplicates(tables)), (), True, ipsets)
