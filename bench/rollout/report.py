"""The rollout lab's tables and picture, from the arms' raw results (DIR/<kernel>/out/*.json)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.rollout.summary import arm_summary
from tests.vm.variant import Variant

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "rollout.md"
README = ROOT / "README.md"
PICTURE = ROOT / "docs" / "rollout.png"
BEGIN, END = (
    "<!-- rollout-lab: begin (bench/rollout_lab.py report --write-docs) -->",
    "<!-- rollout-lab: end -->",
)
# README's kernel table's order and titles.
KERNEL_ORDER = [
    v.value for v in (Variant.PREFIX, Variant.DEBIAN_5_10, Variant.DEBIAN_6_1, Variant.DEBIAN_6_12)
]
KERNEL_TITLES = {name: Variant(name).title for name in KERNEL_ORDER}
SETTING_TITLES = {
    "kube-proxy": "kube-proxy's own",
    "0,0": "0, 0",
    "0,1": "0, 1",
    "1,0": "1, 0",
    "1,1": "1, 1",
}
ARM_TITLES = {
    "kube-proxy": "kube-proxy alone",
    "reaper-immediate": "+ reaper, `immediate`",
    "reaper-default": "+ reaper, default policy",
    "reaper-idle": "+ reaper, idle-only (the earlier default)",
    "kube-router": "kube-router's rule",
}
FAILURE_KINDS = ("refused", "reset", "timeout", "unreachable", "cut", "http-502", "http-504")

Key = tuple[str, str, str]  # kernel, setting, arm


def load(directories: list[Path]) -> dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(summary, raw) per kernel, setting and arm, one per repeat."""
    found: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for directory in directories:
        for path in sorted(directory.glob("**/out/*.json")):
            raw = json.loads(path.read_text())
            summary = arm_summary(raw)
            kernel = path.parent.parent.name
            found[(kernel, summary["setting"], summary["arm"])].append((summary, raw))
    return found


def _failed(summary: dict[str, Any]) -> int:
    return sum(client["failed"] for client in summary["clients"].values())


def _cell(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    parts = []
    for summary, _ in runs:
        still = any(client["failing_at_end"] for client in summary["clients"].values())
        parts.append(f"**{_failed(summary)}**{' †' if still else ''}" if _failed(summary) else "0")
    return ", ".join(parts)


def _sysctl_text(runs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    values = runs[0][0]["sysctls"]
    return f"{values['conn_reuse_mode']}, {values['expire_nodest_conn']}"


def headline(found: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]]) -> str:
    kernels = [k for k in KERNEL_ORDER if any(key[0] == k for key in found)]
    lines = []
    for kernel in kernels:
        lines += [f"#### {KERNEL_TITLES[kernel]}", ""]
        lines.append(
            "| sysctls: `conn_reuse_mode`, `expire_nodest_conn` | " + " | ".join(ARM_TITLES.values()) + " |"
        )
        lines.append("|---" * (1 + len(ARM_TITLES)) + "|")
        for setting, title in SETTING_TITLES.items():
            row = [found.get((kernel, setting, arm), []) for arm in ARM_TITLES]
            if not any(row):
                continue
            first = next(runs for runs in row if runs)
            label = f"**{title}** ({_sysctl_text(first)})" if setting == "kube-proxy" else title
            lines.append(f"| {label} | " + " | ".join(_cell(runs) if runs else "" for runs in row) + " |")
        lines.append("")
    return "\n".join(lines)


def readme_table(found: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]]) -> str:
    """README's summary: per kernel and setting, failed requests per rollout with kube-proxy alone and with
    the reaper's default policy (the lowest and highest run)."""
    kernels = [k for k in KERNEL_ORDER if any(key[0] == k for key in found)]
    lines = [
        "| `conn_reuse_mode`, `expire_nodest_conn` | " + " | ".join(KERNEL_TITLES[k] for k in kernels) + " |",
        "|---" * (1 + len(kernels)) + "|",
    ]
    for setting, title in SETTING_TITLES.items():
        cells = []
        for kernel in kernels:
            alone = found.get((kernel, setting, "kube-proxy"), [])
            reaped = found.get((kernel, setting, "reaper-default"), [])
            if not alone and not reaped:
                cells.append("")
                continue
            # An arm that did not complete is said, not left blank.
            before = _spread([_failed(summary) for summary, _ in alone]) if alone else "(no run)"
            after = _spread([_failed(summary) for summary, _ in reaped]) if reaped else "(no run)"
            sysctls = (alone or reaped)[0][0]["sysctls"]
            own = (
                f" ({sysctls['conn_reuse_mode']}, {sysctls['expire_nodest_conn']})"
                if setting == "kube-proxy"
                else ""
            )
            shown = f"**{before}**" if before not in ("0", "(no run)") else before
            cells.append(f"{shown} → {after}{own}")
        label = f"**{title}**" if setting == "kube-proxy" else title
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: list[Any], digits: int = 0) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    low, high = min(present), max(present)
    shown = f"{low:.{digits}f}" if digits else f"{round(low)}"
    if low == high:
        return shown
    return f"{shown} to {high:.{digits}f}" if digits else f"{shown} to {round(high)}"


def _setting_text(setting: str, at_end: dict[str, int]) -> str:
    """The setting the arm started from, and the value the reaper changed, if it did."""
    # kube-proxy's own settings always have expire_nodest_conn=1, so the reaper changes nothing there.
    started = 1 if setting == "kube-proxy" else int(setting.split(",")[1])
    text = (
        f"{SETTING_TITLES[setting]} ({at_end['conn_reuse_mode']}, 1)"
        if setting == "kube-proxy"
        else SETTING_TITLES[setting]
    )
    if at_end["expire_nodest_conn"] != started:
        text += f", then {at_end['expire_nodest_conn']} (the reaper)"
    return text


def _per_run(runs: list[dict[str, Any]], field: str) -> list[int]:
    return [sum(client[field] for client in summary["clients"].values()) for summary in runs]


def details(found: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]]) -> str:
    lines = [
        "| kernel | sysctls (`conn_reuse_mode`, `expire_nodest_conn`) | arm | runs | requests | failed: "
        + ", ".join(FAILURE_KINDS)
        + " | connect p50 / p99 / max (s) | failing after the rollout (s) | source ports reused |"
        " weight 0: left at end / longest (s) | deleted by the reaper |",
        "|---" * 11 + "|",
    ]  # fmt: skip
    for key in sorted(found, key=lambda k: (KERNEL_ORDER.index(k[0]), list(SETTING_TITLES).index(k[1]),
                                            list(ARM_TITLES).index(k[2]))):  # fmt: skip
        runs = [summary for summary, _ in found[key]]
        clients = [c for s in runs for c in s["clients"].values()]
        kinds = "/".join(
            _spread([sum(c["outcomes"].get(kind, 0) for c in s["clients"].values()) for s in runs])
            for kind in FAILURE_KINDS
        )
        direct = [s["clients"]["direct"] for s in runs]
        latency = " / ".join(
            _spread([c[f] for c in direct], 2) for f in ("connect_p50", "connect_p99", "connect_max")
        )
        after = [max((c["failing_after"] or 0.0) for c in s["clients"].values()) for s in runs]
        still = " (still failing at the end)" if any(c["failing_at_end"] for c in clients) else ""
        reused = sum(c["ports_reused"] for c in clients) / max(1, sum(c["ports_seen"] for c in clients))
        lines.append(
            f"| {KERNEL_TITLES[key[0]]} | {_setting_text(key[1], runs[0]['sysctls'])}"
            f" | {ARM_TITLES[key[2]]} | {len(runs)} | {_spread(_per_run(runs, 'requests'))}"
            f" | {_spread(_per_run(runs, 'failed'))}: {kinds} | {latency} | {_spread(after)}{still}"
            f" | {reused:.0%}"
            f" | {_spread([s['weight_zero']['left_at_end'] for s in runs])}"
            f" / {_spread([s['weight_zero']['longest'] for s in runs])}"
            f" | {_spread([s['reaper_deleted'] for s in runs])} |"
        )
    return "\n".join(lines)


def draw(found: dict[Key, list[tuple[dict[str, Any], dict[str, Any]]]], path: Path) -> str | None:
    """Failures and connect latency through one rollout, every arm, on the most exposed setting measured."""
    import matplotlib  # the lab's extra (`pip install -e '.[bench]'`), not the product's

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    choice = next(
        ((kernel, setting) for kernel, setting in (("pre-fix", "kube-proxy"), ("6.1", "0,0"), ("5.10", "0,0"))
         if any(key[:2] == (kernel, setting) for key in found)),
        None,
    )  # fmt: skip
    if choice is None:
        return None
    figure, (failures, latency) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    colors = {"kube-proxy": "tab:red", "reaper-immediate": "tab:blue", "reaper-default": "tab:green",
              "reaper-idle": "tab:purple", "kube-router": "tab:orange"}  # fmt: skip
    bin_seconds = 5.0
    for arm, title in ARM_TITLES.items():
        runs = found.get((*choice, arm))
        if not runs:
            continue
        raw = runs[0][1]
        # Each arm's own clock: from the moment its last old pod was gone (arms roll at their own pace).
        start = raw["rollout"]["ended"]
        bins: dict[int, list[list[Any]]] = defaultdict(list)
        for records in raw["clients"].values():
            for record in records:
                bins[int((record[0] - start) // bin_seconds)].append(record)
        xs = sorted(bins)
        failures.plot([x * bin_seconds for x in xs], [sum(r[3] != "ok" for r in bins[x]) for x in xs],
                      label=title.replace("`", ""), color=colors[arm])  # fmt: skip
        direct: dict[int, list[float]] = defaultdict(list)
        for record in raw["clients"]["direct"]:
            direct[int((record[0] - start) // bin_seconds)].append(
                record[1] if record[1] is not None else record[2]  # a failed connect counts with its wait
            )
        dx = sorted(direct)
        latency.plot([x * bin_seconds for x in dx], [max(direct[x]) for x in dx], color=colors[arm])
    for axis in (failures, latency):
        axis.axvspan(axis.get_xlim()[0], 0, color="0.92")
        axis.grid(alpha=0.3)
    failures.set_ylabel(f"failed requests per {bin_seconds:.0f} s")
    latency.set_ylabel("slowest connect per 5 s (s)")
    latency.set_xlabel("seconds after the last old pod was gone (grey: load before it, the rollout included)")
    failures.legend()
    kernel, setting = choice
    figure.suptitle(f"{KERNEL_TITLES[kernel]}, {SETTING_TITLES[setting]} sysctls: one rollout per arm")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return f"{KERNEL_TITLES[kernel]}, {SETTING_TITLES[setting]}"


def write_report(directories: list[Path], *, write_docs: bool) -> None:
    found = load(directories)
    generated = "\n".join([
        "### Failed requests per rollout, direct and through nginx together, one number per run",
        "",
        "† still failing when the window closed.",
        "",
        headline(found),
        "### Every arm",
        "",
        details(found),
    ])  # fmt: skip
    print(generated)
    print(readme_table(found))
    if not write_docs:
        return
    pictured = draw(found, PICTURE)
    if pictured:
        generated += f"\n\n![Failures and connect latency through one rollout ({pictured})](rollout.png)\n"
    _replace_between(DOC, generated)
    _replace_between(README, readme_table(found))


def _replace_between(path: Path, generated: str) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to write between")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{generated}\n{END}", text))
