"""Which kernel and IPVS the throwaway VM boots: Debian 12's default kernel (6.1) as shipped, the same kernel
with the pre-fix rebuild of `ip_vs.ko` (`prefix_ipvs.py`), and Debian's other reachable kernels (bullseye's
5.10, bookworm's 6.12). The host picks one per VM run and tells the guest through the environment; the guest
checks that the module actually loaded is the expected build before any test runs."""

from __future__ import annotations

import enum
import os
from pathlib import Path

ENVIRONMENT = "IPVS_REAPER_VM_VARIANT"
IP_VS_TAINT = Path("/sys/module/ip_vs/taint")


class Variant(enum.StrEnum):
    DEBIAN_6_1 = "6.1"  # Debian 12's linux-image-amd64, as shipped: carries all three fixes
    PREFIX = "pre-fix"  # the same kernel, its ip_vs.ko rebuilt with the three fixes reverted
    DEBIAN_5_10 = "5.10"  # Debian 11's linux-image-amd64
    DEBIAN_6_12 = "6.12"  # Debian 12's newest 6.12 package

    @property
    def title(self) -> str:
        return {
            Variant.DEBIAN_6_1: "Debian 6.1",
            Variant.PREFIX: "pre-fix IPVS on Debian 6.1",
            Variant.DEBIAN_5_10: "Debian 5.10",
            Variant.DEBIAN_6_12: "Debian 6.12",
        }[self]

    @property
    def prefix_ipvs(self) -> bool:
        return self is Variant.PREFIX


DEFAULT = Variant.DEBIAN_6_1


def current() -> Variant:
    return Variant(os.environ.get(ENVIRONMENT, DEFAULT.value))


def check_loaded_module(expected: Variant, taint_file: Path = IP_VS_TAINT) -> None:
    """Raise unless the loaded ip_vs is the expected build: only the rebuilt one is out of tree (taint O)."""
    try:
        taint = taint_file.read_text().strip()
    except OSError as error:
        raise RuntimeError(f"ip_vs is not loaded ({taint_file}: {error})") from error
    out_of_tree = "O" in taint
    if out_of_tree != expected.prefix_ipvs:
        raise RuntimeError(
            f"the VM was to run {expected.title}, but the loaded ip_vs has taint {taint!r}"
            f" ({'out of tree: the rebuilt one' if out_of_tree else 'Debian own'})"
        )
