"""`python -m tests.vm -- .venv/bin/python -m tests.kernel.conn_capture`: a real /proc/net/ip_vs_conn.

Builds a node with three virtual services (TCP, UDP, and a persistent TCP one, whose entries include a
persistence template), sends connections through them from a client pod (one held open, others closed, so
the table holds ESTABLISHED, TIME_WAIT/FIN_WAIT and UDP entries), and saves the kernel's text to the VM's
results share (/run/ipvs-vm/dumps/proc-net-ip_vs_conn.txt); copy it to tests/fixtures/. The file is the
kernel's own output, for the reader's tests."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from tests.kernel.lab import Lab, prepare_node

OUT = Path("/run/ipvs-vm/dumps")
TCP_VIP, UDP_VIP, STICKY_VIP = "10.96.0.20", "10.96.0.10", "10.96.0.30"


def main() -> int:
    prepare_node()
    lab = Lab()
    try:
        lab.masquerade_like_kube_proxy()
        lab.cluster_ips(TCP_VIP, UDP_VIP, STICKY_VIP)
        backend = lab.pod("backend-0", "10.244.1.3")
        lab.serve(backend, 3306)
        lab.serve(backend, 53, kind=socket.SOCK_DGRAM)
        lab.serve(backend, 80)
        lab.ipvsadm("-A", "-t", f"{TCP_VIP}:3306", "-s", "rr")
        lab.ipvsadm("-a", "-t", f"{TCP_VIP}:3306", "-r", "10.244.1.3:3306", "-m", "-w", "1")
        lab.ipvsadm("-A", "-u", f"{UDP_VIP}:53", "-s", "rr")
        lab.ipvsadm("-a", "-u", f"{UDP_VIP}:53", "-r", "10.244.1.3:53", "-m", "-w", "1")
        lab.ipvsadm("-A", "-t", f"{STICKY_VIP}:80", "-s", "rr", "-p", "600")
        lab.ipvsadm("-a", "-t", f"{STICKY_VIP}:80", "-r", "10.244.1.3:80", "-m", "-w", "1")
        for port in (40002, 40003):
            assert lab.client(port).tcp(TCP_VIP, 3306).pod == "backend-0"
        assert lab.client(40004).udp(UDP_VIP, 53).pod == "backend-0"
        assert lab.client(40005).tcp(STICKY_VIP, 80).pod == "backend-0"
        # Last: the pod's server answers one connection at a time, and this one sends no request.
        held = lab.client(40001).connect_and_hold(TCP_VIP, 3306)
        OUT.mkdir(parents=True, exist_ok=True)
        text = Path("/proc/net/ip_vs_conn").read_text()
        (OUT / "proc-net-ip_vs_conn.txt").write_text(text)
        print(text)
        held.close()
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
