"""README's kernel table says what the kernel tier measures: it is rendered here from the outcomes that
tier asserts on each kernel (tests/kernel/expected.py), and README must carry it as it is."""

from __future__ import annotations

from pathlib import Path

from tests.kernel.expected import DEAD, KUBE_PROXY_SETTINGS, LIVE, MATRIX, TIMEOUT, kernel_before_5_9
from tests.kernel.lab import kube_proxy_sysctls
from tests.vm.variant import Variant

README = Path(__file__).resolve().parents[1] / "README.md"
COLUMNS = (Variant.PREFIX, Variant.DEBIAN_5_10, Variant.DEBIAN_6_1, Variant.DEBIAN_6_12)
WORDS = {LIVE: "live pod", DEAD: "**dead pod**", TIMEOUT: "**dropped**"}


def cell(outcome: tuple[str, str]) -> str:
    at_weight_zero, after_delete = outcome
    return f"{WORDS[at_weight_zero]} / {WORDS[after_delete]}"


def kube_proxy_settings(variant: Variant) -> str:
    settings = kube_proxy_sysctls(kernel_before_5_9(variant))
    return f"({settings['conn_reuse_mode']}, {settings['expire_nodest_conn']})"


def rendered_table() -> str:
    header = "| `conn_reuse_mode`, `expire_nodest_conn` | " + " | ".join(v.title for v in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    lines.append(
        "| **kube-proxy's own settings** | "
        + " | ".join(f"{cell(KUBE_PROXY_SETTINGS[v])} {kube_proxy_settings(v)}" for v in COLUMNS)
        + " |"
    )
    for reuse, nodest in sorted(MATRIX[Variant.PREFIX]):
        row = " | ".join(cell(MATRIX[v][reuse, nodest]) for v in COLUMNS)
        lines.append(f"| {reuse}, {nodest} | {row} |")
    return "\n".join(lines)


def test_readme_carries_the_measured_kernel_table() -> None:
    table = rendered_table()
    assert table in README.read_text(), f"README.md's kernel table should read:\n\n{table}\n"


def test_every_variant_has_a_column_and_every_row_is_measured_on_it() -> None:
    assert set(COLUMNS) == set(Variant)
    assert all(set(MATRIX[v]) == set(MATRIX[Variant.PREFIX]) for v in Variant)
