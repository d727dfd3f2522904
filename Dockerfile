# syntax=docker/dockerfile:1.4
# ipvs-reaper's image: Debian's Python 3.11, a virtualenv of the package, and iptables and nftables (read by
# `ipvs-reaper doctor` and the agent's hostPort check).
#
#   podman build -t ipvs-reaper .                 (or docker build)
#
# Behind a TLS-inspecting proxy, hand pip the proxy's CA bundle as a build secret; it is read during that
# one step and never stored in a layer:
#
#   podman build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt -t ipvs-reaper .
#
# The Python dependencies come from requirements.lock: every package pinned, with its hashes (pip
# --require-hashes refuses anything else), the build backend included. Regenerate it with the command in its
# header after changing pyproject.toml; tests/test_requirements_lock.py fails while it is not current.
#
# The base: pin it by digest for a reproducible build, and update the digest when Debian publishes a point
# release or a security update (for instance monthly):
#   skopeo inspect --format '{{.Digest}}' docker://docker.io/library/debian:bookworm-slim
#   podman build --build-arg BASE=docker.io/library/debian:bookworm-slim@sha256:<digest> ...
# The default is the tag alone until a digest read from the registry is committed here.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ipvs-reaper
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY ipvs_reaper ./ipvs_reaper
# pip and setuptools leave with the build. Of the kubernetes package: its asyncio copy of the generated client
# (kubernetes/aio) goes, since nothing here imports it (the agent uses the synchronous client, kopf its own
# aiohttp session); the generated API and model modules (kubernetes/client/{api,models}: every one of them is
# imported at start) are kept as byte-code only, 33 MB of source no one reads in a container, and compiled with
# docstrings left out (-o 2; nothing reads them either, and they are most of that byte-code). The rest is
# compiled here once as well, since the root filesystem is read-only at run time.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/ipvs-reaper/bin/pip install --no-cache-dir --no-compile --require-hashes -r requirements.lock \
    && /opt/ipvs-reaper/bin/pip install --no-cache-dir --no-compile --no-deps --no-build-isolation . \
    && /opt/ipvs-reaper/bin/pip uninstall -q -y pip setuptools \
    && k8s=/opt/ipvs-reaper/lib/python3.11/site-packages/kubernetes \
    && rm -rf "$k8s/aio" \
    && /opt/ipvs-reaper/bin/python -m compileall -q -b -o 2 -j 0 "$k8s/client/api" "$k8s/client/models" \
    && find "$k8s/client/api" "$k8s/client/models" -name '*.py' -delete \
    && /opt/ipvs-reaper/bin/python -m compileall -q -j 0 /opt/ipvs-reaper/lib

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ipvs-reaper" \
      org.opencontainers.image.description="Removes stale weight-0 IPVS real servers that kube-proxy leaves behind, safely" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ipvs-reaper/ipvs-reaper" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# The interpreter, and the save tools of both iptables backends, nft and ipset, which the doctor runs to read
# the node's NAT rules and kube-proxy's IP sets (it never changes them): no compilers, no pip, no apt lists.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 iptables nftables ipset \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
COPY --from=build /opt/ipvs-reaper /opt/ipvs-reaper
# The bundled example, for `ipvs-reaper scan` without a cluster (README: Quick start).
COPY examples /usr/share/ipvs-reaper/examples
ENV PATH=/opt/ipvs-reaper/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Root, on purpose: IPVS netlink needs CAP_NET_ADMIN, and a non-root process gets no effective capabilities
# without ambient ones (kubernetes#56374). The chart drops every other capability.
USER 0
ENTRYPOINT ["ipvs-reaper"]
CMD ["run"]
