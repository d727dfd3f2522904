"""Whole-table read benchmark: parse a generated /proc/net/ip_vs text of N virtual services x M real servers.

Run: .venv/bin/python bench/table_read.py [--services 10000] [--reals 5] [--repeat 5]
Prints the best and median wall time of `parse_proc_ip_vs` over the repeats (the text is generated once).
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import time

from ipvs_reaper.ipvs.procfs import parse_proc_ip_vs, render_proc_ip_vs
from ipvs_reaper.values import IpvsTable, Protocol, RealKey, RealServer, VirtualKey, VirtualService


def generated_table(services: int, reals: int) -> IpvsTable:
    base_vip = int(ipaddress.IPv4Address("10.96.0.0"))
    base_pod = int(ipaddress.IPv4Address("10.244.0.0"))
    svcs, real_servers = [], []
    for i in range(services):
        key = VirtualKey.inet(Protocol.TCP, ipaddress.IPv4Address(base_vip + i), 80 + i % 3)
        svcs.append(VirtualService(key, "rr"))
        for j in range(reals):
            address = ipaddress.IPv4Address(base_pod + i * reals + j)
            real_servers.append(RealServer(RealKey(key, address, 8080), "Masq", j % 2, j, 3 * j))
    return IpvsTable(tuple(svcs), tuple(real_servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--reals", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    text = render_proc_ip_vs(generated_table(args.services, args.reals))
    timings = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        table = parse_proc_ip_vs(text)
        timings.append(time.perf_counter() - start)
    assert len(table.real_servers) == args.services * args.reals
    print(
        f"{args.services} services x {args.reals} real servers ({len(text) / 1e6:.1f} MB of text): "
        f"best {min(timings):.3f} s, median {statistics.median(timings):.3f} s over {args.repeat} runs"
    )


if __name__ == "__main__":
    main()
