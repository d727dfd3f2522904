"""Where each VM variant's kernel package comes from, and its exact name and version.

Debian 12's kernels come through the host's own apt. Bullseye's 5.10 comes through a private apt (its own
source list, package lists and cache under the VM cache folder) that serves that `apt-get download` alone:
nothing is ever installed from it, and the host's sources are not touched."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.errors import VmError
from tests.vm.variant import Variant

META_PACKAGE = "linux-image-amd64"
LISTS_MAX_AGE_SECONDS = 24 * 3600
# Bookworm has no meta package for its 6.12 kernels: the newest ABI package stands for them.
BOOKWORM_6_12 = re.compile(r"^linux-image-6\.12\.([0-9]+)\+deb12-amd64-unsigned$")  # POSIX ERE too, for apt
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BULLSEYE_SOURCES = "".join(
    f"deb [signed-by={KEYRING}] http://deb.debian.org/{archive} {suite} main\n"
    for archive, suite in (("debian", "bullseye"), ("debian-security", "bullseye-security"))
)


def run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise VmError(
            f"{args[0]} is not installed (tests/vm/host-packages.sh installs it): {error}"
        ) from error
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-30:])
        raise VmError(f"`{' '.join(args)}` failed with exit code {done.returncode}:\n{tail}")
    return done.stdout


@dataclass(frozen=True)
class Apt:
    """apt with these options: none for the host's own, or a private source list and state."""

    options: tuple[str, ...] = ()

    def cache(self, *args: str) -> str:
        return run(["apt-cache", *self.options, *args])

    def download(self, package: str, into: Path) -> Path:
        """`package` may pin a version (`name=version`); the one .deb it fetched."""
        run(["apt-get", *self.options, "download", package], cwd=into)
        name = package.split("=", 1)[0]
        found = sorted(into.glob(f"{name}_*.deb"))
        if len(found) != 1:
            raise VmError(f"apt-get download {package} left {[p.name for p in found]}")
        return found[0]

    def candidate(self, package: str) -> str | None:
        for line in self.cache("policy", package).splitlines():
            if line.strip().startswith("Candidate:"):
                value = line.split(":", 1)[1].strip()
                return None if value == "(none)" else value
        return None


def private_apt(folder: Path, sources: str) -> Apt:
    for part in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    (folder / "sources.list").write_text(sources)
    apt = Apt(
        (
            "-o", f"Dir::Etc::SourceList={folder / 'sources.list'}",
            "-o", f"Dir::Etc::SourceParts={folder / 'sources.list.d'}",
            "-o", f"Dir::State::Lists={folder / 'lists'}",
            "-o", f"Dir::Cache={folder / 'cache'}",
        )
    )  # fmt: skip
    # Refreshed once a day, like the host's own lists between two runs of host-packages.sh: a cached image
    # of the same version needs no network.
    stamp = folder / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE_SECONDS:
        run(["apt-get", *apt.options, "update", "-q"])
        stamp.touch()
    return apt


@dataclass(frozen=True)
class KernelPackage:
    name: str  # the image package: "linux-image-6.1.0-57-amd64"
    version: str  # its Debian version: "6.1.192-3"
    apt: Apt  # where it (and, for the pre-fix build, its source and headers) comes from


def _behind_meta(apt: Apt) -> str:
    for line in apt.cache("depends", META_PACKAGE).splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if line.strip().startswith("Depends:") and name.startswith("linux-image-"):
            return name
    raise VmError(f"cannot find the kernel image package behind {META_PACKAGE} (is `apt-get update` done?)")


def _newest_6_12(apt: Apt) -> str:
    names = apt.cache("search", "--names-only", BOOKWORM_6_12.pattern).split()
    numbered = sorted(
        (int(match.group(1)), name) for name in names if (match := BOOKWORM_6_12.match(name)) is not None
    )
    for _, name in reversed(numbered):
        if apt.candidate(name) is not None:
            return name
    raise VmError(f"apt knows no installable 6.12 kernel package (searched {BOOKWORM_6_12.pattern})")


def resolve(variant: Variant, cache: Path) -> KernelPackage:
    if variant is Variant.DEBIAN_5_10:
        apt = private_apt(cache / "apt-bullseye", BULLSEYE_SOURCES)
        name = _behind_meta(apt)
    elif variant is Variant.DEBIAN_6_12:
        apt = Apt()
        name = _newest_6_12(apt)
    else:
        apt = Apt()
        name = _behind_meta(apt)
    version = apt.candidate(name)
    if version is None:
        raise VmError(f"{name} has no installable version in apt's lists")
    return KernelPackage(name, version, apt)
