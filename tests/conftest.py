from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import Phase, settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fixtures() -> Path:
    return ROOT / "tests" / "fixtures"


@pytest.fixture
def examples() -> Path:
    return ROOT / "examples"


# `--hypothesis-profile=mutation`: no shrinking and no example database, for checking quickly that a
# deliberately broken safety check makes the properties fail.
settings.register_profile("mutation", phases=[Phase.explicit, Phase.generate], database=None)
