"""requirements.lock, from which the image installs its Python dependencies with --require-hashes, is current
with pyproject.toml: every dependency and the build backend pinned at a version its specifier allows, every
pin with a hash, nothing pinned that nothing asks for. Offline: it reads the two files, never an index."""

from __future__ import annotations

import re
import tomllib
from collections import defaultdict

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"


def pins() -> tuple[dict[str, Version], dict[str, int], dict[str, set[str]]]:
    versions: dict[str, Version] = {}
    hashes: dict[str, int] = defaultdict(int)
    wanted_by: dict[str, set[str]] = defaultdict(set)
    current = ""
    lines = LOCK.read_text().splitlines()
    for index, line in enumerate(lines):
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\]+)", line)
        if pinned:
            current = canonicalize_name(pinned[1])
            versions[current] = Version(pinned[2])
        elif line.strip().startswith("--hash=sha256:"):
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line.strip()), line
            hashes[current] += 1
        elif re.match(r"^\s+# via", line):
            # "# via x" on one line, or "# via" followed by "#   x" lines.
            names = line.split("# via", 1)[1].split()
            for follow in lines[index + 1 :]:
                if not re.match(r"^\s+#   ", follow):
                    break
                names += follow.split("#", 1)[1].split()
            wanted_by[current].update(
                n if n in ("-", "(pyproject.toml)") else canonicalize_name(n) for n in names
            )
    return versions, hashes, wanted_by


def test_every_dependency_and_the_build_backend_is_pinned_within_its_specifier() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(text) for text in project["project"]["dependencies"]]
    wanted += [Requirement(text) for text in project["build-system"]["requires"]]
    versions, _, _ = pins()
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{name} is not in requirements.lock: regenerate it (its header says how)"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"requirements.lock pins {name}=={versions[name]}, outside pyproject's {requirement}: regenerate"
        )


def test_every_pin_has_hashes_and_is_asked_for() -> None:
    versions, hashes, wanted_by = pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    backend = {canonicalize_name(Requirement(t).name) for t in project["build-system"]["requires"]}
    for name in versions:
        assert hashes[name] >= 1, f"{name} has no hash: --require-hashes would refuse it"
        askers = wanted_by[name]
        # Asked for by the project (pyproject.toml, or its build backend) or by another pin; one
        # asked for only by packages no longer pinned is left over from an older lock.
        asked = "(pyproject.toml)" in askers or name in backend or bool(askers & set(versions))
        assert asked, f"{name} is pinned but nothing pinned asks for it ({sorted(askers)}): regenerate"


def test_the_image_installs_from_the_lock_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "--no-deps --no-build-isolation ." in dockerfile  # the package alone: nothing unpinned comes along
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text()
