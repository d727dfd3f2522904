from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def api(kmock: Any) -> Any:
    """kmock's Kubernetes emulator; its bundled discovery gives the kinds verbs, or kopf won't watch them."""
    kmock.resources.load_bundled()
    return kmock
