"""ipvs-reaper: removes the stale weight-0 IPVS real servers kube-proxy leaves behind, safely."""

from importlib import metadata


def package_version() -> str:
    """The installed distribution's version (`pyproject.toml`), for --version, logs and metrics."""
    try:
        return metadata.version("ipvs-reaper")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
