"""Where a reused source port goes once its real server is at weight 0 and its pod is dead, and once that
real server is deleted, per IPVS variant: the outcomes the kernel tier asserts (test_reuse_matrix.py, the
probe's test) and README's kernel table is checked against (tests/test_readme_kernels.py). Data only, so the
host can read it.

Debian's kernels (5.10, 6.1, 6.12) carry all three fixes of kernel-ipvs-facts.md; the pre-fix IPVS is
Debian's 6.1 with them reverted (tests/vm/prefix_ipvs/): the IPVS of a kernel older than 5.9 without their
stable backports."""

from __future__ import annotations

from tests.vm.variant import Variant

LIVE = "live pod"
DEAD = "dead pod"
TIMEOUT = "timeout"

# (conn_reuse_mode, expire_nodest_conn) -> (with the real server at weight 0, after it is deleted); the
# lab's other IPVS sysctls at the kernel's defaults (conntrack=0).
FIXED = {
    (0, 0): (DEAD, TIMEOUT),
    (0, 1): (LIVE, LIVE),  # c95c07836fa4 reschedules a new connection off a weight-0 real server
    (1, 0): (LIVE, LIVE),
    (1, 1): (LIVE, LIVE),
}
MATRIX = {
    Variant.DEBIAN_5_10: FIXED,
    Variant.DEBIAN_6_1: FIXED,
    Variant.DEBIAN_6_12: FIXED,
    Variant.PREFIX: {
        (0, 0): (DEAD, TIMEOUT),
        # No c95c07836fa4: weight 0 moves nothing while conn_reuse_mode=0. Without 35dfb013149f the first
        # SYN after the deletion is dropped and its entry expired: the client's retransmit gets through.
        (0, 1): (DEAD, LIVE),
        (1, 0): (LIVE, LIVE),
        (1, 1): (LIVE, LIVE),
    },
}

# With every IPVS sysctl kube-proxy sets for that kernel (tests.kernel.lab.kube_proxy_sysctls): the pre-fix
# IPVS stands for a kernel before 5.9, where kube-proxy sets conn_reuse_mode=0; on Debian's it leaves it at 1.
KUBE_PROXY_SETTINGS = {
    Variant.DEBIAN_5_10: (LIVE, LIVE),
    Variant.DEBIAN_6_1: (LIVE, LIVE),
    Variant.DEBIAN_6_12: (LIVE, LIVE),
    Variant.PREFIX: (DEAD, LIVE),
}


def kernel_before_5_9(variant: Variant) -> bool:
    return variant is Variant.PREFIX
