"""The Dockerfile, built for real with podman (`--isolation chroot`: containers cannot run here), on a local
stand-in for `debian:bookworm-slim` made the way the official one is (debootstrap minbase, then slimmed). The
image is then mounted and its `ipvs-reaper` run with chroot: `--version`, and the Quick start's scan."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipvs_reaper import package_version
from tests.conftest import ROOT
from tests.tools import CACHE, debian_binary

BASE = "docker.io/library/debian:bookworm-slim"
IMAGE = "localhost/ipvs-reaper:test"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
MAX_BYTES = 200 * 1000 * 1000  # the target, uncompressed
MIRROR = "http://deb.debian.org/debian"

# What the official slim images leave out (debuerreotype's slimify), so that the size reported is honest.
SLIM_DPKG_CFG = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""
# The official images' apt configuration: no package caches kept after update or install.
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin"
APT_CLEAN = f"""\
DPkg::Post-Invoke {{ "{_CLEAN} || true"; }};
APT::Update::Post-Invoke {{ "{_CLEAN} || true"; }};
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""
SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def podman(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(debian_binary("podman")), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def slim(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(SLIM_DPKG_CFG)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(APT_CLEAN)
    for pattern in ("usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*"):
        for path in rootfs.glob(pattern):
            if path.name in ("locale.alias",):
                continue
            if path.is_dir() and not path.is_symlink():
                keep = path / "copyright"
                for inner in list(path.iterdir()):
                    if inner != keep:
                        shutil.rmtree(inner) if inner.is_dir() and not inner.is_symlink() else inner.unlink()
                if not keep.exists():
                    path.rmdir()
            else:
                path.unlink()
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/log/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)


def make_base() -> None:
    """debootstrap --variant=minbase bookworm, slimmed, imported under the Dockerfile's base name."""
    work = CACHE / "bookworm-minbase"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rootfs = work / "rootfs"
    result = subprocess.run(
        [str(debian_binary("debootstrap")), "--variant=minbase", "bookworm", str(rootfs), MIRROR],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    slim(rootfs)
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    podman("import", "--change", 'CMD ["bash"]', str(archive), BASE)
    shutil.rmtree(work)


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    if subprocess.run([str(debian_binary("podman")), "image", "exists", BASE], check=False).returncode != 0:
        make_base()
    podman(
        "build",
        "--isolation",
        "chroot",
        "--pull=never",
        "--secret",
        f"id=ca,src={CA_BUNDLE}",
        "--build-arg",
        f"VERSION={package_version()}",
        "-t",
        IMAGE,
        "-f",
        str(ROOT / "Dockerfile"),
        str(ROOT),
    )
    mounted = Path(podman("image", "mount", IMAGE).stdout.strip())
    try:
        yield mounted
    finally:
        podman("image", "unmount", IMAGE)


CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def in_image(
    root: Path, *args: str, program: str = "/opt/ipvs-reaper/bin/ipvs-reaper", stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROOT, str(root), program, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/opt/ipvs-reaper/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_version(image: Path) -> None:
    result = in_image(image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ipvs-reaper {package_version()}"


def test_the_agent_imports(image: Path) -> None:
    # `scan` of files loads neither kopf nor the Kubernetes client; `run` loads both.
    result = in_image(image, "-c", "import ipvs_reaper.agent.main", program="/opt/ipvs-reaper/bin/python")
    assert result.returncode == 0, result.stderr


def test_the_quick_start_scan(image: Path) -> None:
    examples = "/usr/share/ipvs-reaper/examples"
    result = in_image(
        image,
        "scan",
        "--cluster-state",
        f"{examples}/cluster.json",
        "--ipvs-table",
        f"{examples}/ip_vs.txt",
        "--node-name",
        "node-a",
        "--kernel-release",
        "6.1.0-18-amd64",
        "--sysctls",
        f"{examples}/sysctl.txt",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["reap"] > 0


def test_the_doctor_and_its_tools(image: Path) -> None:
    for tool in ("iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"):
        assert in_image(image, "--version", program=f"/usr/sbin/{tool}").returncode == 0, tool
    assert in_image(image, "--version", program="/usr/sbin/nft").returncode == 0
    assert in_image(image, "version", program="/usr/sbin/ipset").returncode == 0
    examples = "/usr/share/ipvs-reaper/examples"
    dump = (ROOT / "tests" / "netfilter" / "dumps" / "portmap.iptables-legacy-save").read_text()
    result = in_image(
        image,
        "doctor", "-o", "json", "--node-name", "node-a",
        "--cluster-state", f"{examples}/cluster.json", "--ipvs-table", f"{examples}/ip_vs.txt",
        "--iptables-save", "-",
        stdin=dump,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    ports = {
        (f["protocol"], f["port"])
        for f in json.loads(result.stdout)["findings"]
        if f["kind"] == "well-known-port"
    }
    assert ports == {("TCP", 80), ("TCP", 443), ("UDP", 53)}


def test_small_and_without_build_tools_or_the_build_secret(image: Path) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    assert size < MAX_BYTES, f"{size / 1e6:.0f} MB"
    for absent in (
        "opt/ipvs-reaper/bin/pip",
        "usr/bin/gcc",
        "usr/bin/cc",
        "run/secrets/ca",
        "root/.cache/pip",
    ):
        assert not (image / absent).exists(), absent
    # minbase has no CA bundle: one here would be the build machine's, baked in.
    assert not (image / "etc/ssl/certs/ca-certificates.crt").exists()
    config = json.loads(podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["ipvs-reaper"] and config["Cmd"] == ["run"]
    assert config["User"] == "0"
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert config["Labels"]["org.opencontainers.image.version"] == package_version()


def test_the_dockerfile_labels_the_package_version_by_default() -> None:
    # A plain `docker build` (no --build-arg) must not label the image with a stale version.
    assert f"ARG VERSION={package_version()}\n" in (ROOT / "Dockerfile").read_text()
