"""Where the node's NAT rules come from: the save tools of both iptables backends and `nft -j`, run on the
live node (reading only: the tools list tables that exist and load nothing), or files an SRE captured."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from ipvs_reaper.errors import InputError
from ipvs_reaper.input_text import read_input_text, source_name
from ipvs_reaper.netfilter.iptables_save import parse_iptables_save
from ipvs_reaper.netfilter.nft_json import parse_nft_json
from ipvs_reaper.netfilter.rules import Table

# Without `-t nat`: naming a table makes the legacy tool load its module, and the doctor only reads.
_SAVE_TOOLS = ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save")
_NFT = ("nft", "-j", "list", "ruleset")
_TIMEOUT_SECONDS = 20


@dataclass(frozen=True, slots=True)
class RuleSources:
    tables: tuple[Table, ...]
    notes: tuple[str, ...]  # what could not be read, and why
    read_any: bool  # at least one source answered


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
            notes.append(failure)
            continue
        try:
            tables.extend(parse_iptables_save(output or "", tool))
        except InputError as error:
            notes.append(f"cannot read what {tool} printed: {error}")
            continue
        read_any = True
    output, failure = _run(_NFT)
    if failure is not None:
        notes.append(failure)
    else:
        try:
            tables.extend(parse_nft_json(output or '{"nftables": []}', "nft -j"))
            read_any = True
        except InputError as error:
            notes.append(f"cannot read what nft printed: {error}")
    return RuleSources(tuple(_without_duplicates(tables)), tuple(notes), read_any)


def read_rule_files(iptables_save: Sequence[str], nft_ruleset: Sequence[str]) -> RuleSources:
    """Captured files; InputError names a file that cannot be read."""
    tables: list[Table] = []
    for path in iptables_save:
        tables.extend(parse_iptables_save(read_input_text(path), source_name(path)))
    for path in nft_ruleset:
        tables.extend(parse_nft_json(read_input_text(path), source_name(path)))
    return RuleSources(tuple(_without_duplicates(tables)), (), True)
