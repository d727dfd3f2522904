"""`ipvs-reaper health`: ask the running agent on this node how it is, over its own HTTP endpoints.

The image has no curl or wget; runbooks need a way to read `/readyz` (why it is not ready), `/healthz`
and `/metrics` from inside the pod (`kubectl exec`) or the node. It talks to the agent's own listener on
the node's loopback (hostNetwork), which kube-rbac-proxy, when enabled, does not stand in front of.
"""

from __future__ import annotations

import argparse
import http.client
import sys

from ipvs_reaper.agent.options import DEFAULT_PORT

ENDPOINTS = ("readyz", "healthz", "metrics")


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "what", nargs="?", choices=ENDPOINTS, default="readyz", help="which endpoint (default: %(default)s)"
    )
    parser.add_argument(
        "--address",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help="the agent's --listen, as reachable from here (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="(default: %(default)s)"
    )


def health(args: argparse.Namespace) -> int:
    """Prints the endpoint's answer; 0 when it answered 200, 1 otherwise (or when nothing answers)."""
    host, _, port_text = args.address.rpartition(":")
    if not host or not port_text.isdigit():
        print(f"ipvs-reaper: error: --address: expected HOST:PORT, got {args.address!r}", file=sys.stderr)
        return 2
    connection = http.client.HTTPConnection(host.strip("[]"), int(port_text), timeout=args.timeout)
    try:
        connection.request("GET", f"/{args.what}")
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    except OSError as error:
        print(f"ipvs-reaper: no answer from the agent at {args.address}: {error}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    sys.stdout.write(body if body.endswith("\n") or not body else body + "\n")
    if response.status != 200:
        print(f"ipvs-reaper: /{args.what} answered {response.status} {response.reason}", file=sys.stderr)
        return 1
    return 0
