"""The agent's config, re-read from its mounted ConfigMap file without a restart.

Kubernetes updates a mounted ConfigMap by swapping a symlink, so the file is re-read by content, not watched
by inode. A bad file keeps the last good config and says why once per bad content; a good one applies at the
next refresh. With no good config yet (the first file was bad or missing) there is nothing to act on:
defaults could be more aggressive than what the operator wrote, so the agent reaps nothing until a good file
appears.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ipvs_reaper.config import Config, ConfigError, parse_config_text

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConfigState:
    # None: no good config has been read yet, so nothing may be reaped.
    config: Config | None
    # Why the current file is not in use; None when it is.
    error: str | None
    # The first 12 hex digits of the sha256 of the file in force ("defaults" without a file; None before a
    # good one): which version of the ConfigMap each node runs, for a metric.
    checksum: str | None = None


class ReloadingConfig:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._seen: bytes | None = None  # digest of the content last looked at
        self._state = ConfigState(Config(), None, "defaults") if path is None else ConfigState(None, None)

    @property
    def state(self) -> ConfigState:
        return self._state

    def refresh(self) -> ConfigState:
        if self._path is None:
            return self._state
        try:
            content = self._path.read_bytes()
        except OSError as error:
            return self._reject(f"{self._path}: {error.strerror or error}", digest=b"unreadable")
        digest = hashlib.sha256(content).digest()
        if digest == self._seen:
            return self._state
        try:
            config = parse_config_text(content, str(self._path))
        except ConfigError as error:
            return self._reject(str(error), digest)
        self._seen = digest
        if self._state.config != config or self._state.error is not None:
            log.info("config %s applied", self._path)
        self._state = ConfigState(config, None, digest.hex()[:12])
        return self._state

    def _reject(self, error: str, digest: bytes) -> ConfigState:
        if digest != self._seen:
            kept = (
                "keeping the last good config" if self._state.config else "reaping nothing until it is fixed"
            )
            log.error("config rejected, %s: %s", kept, error)
        self._seen = digest
        self._state = ConfigState(self._state.config, error, self._state.checksum)
        return self._state
