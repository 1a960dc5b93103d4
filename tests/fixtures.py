"""Where the foreign sample products are: ../shared/fixtures beside the project root.

Tests that use them skip with a reason where that folder is absent; they are never
copied into the project. TILESERVER_FIXTURES points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(
    os.environ.get(
        "TILESERVER_FIXTURES", Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
    )
)


def fixture_path(*parts: str) -> Path:
    """A path under the fixtures folder; skips the test when it is not there."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"foreign fixture {path} is absent (see the fixtures README)")
    return path
