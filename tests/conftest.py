"""Shared fixtures. Real annotations come from ../shared (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ANNOTATIONS = Path(
    os.environ.get("MONAI_EMOTION_ANNOTATIONS", REPO.parent / "shared" / "studyforrest-annotations")
)


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The published studyforrest annotations, or a skip saying where they were looked for."""
    if not (SHARED_ANNOTATIONS / "raw").is_dir():
        pytest.skip(
            f"real studyforrest annotations not found at {SHARED_ANNOTATIONS} "
            "(set MONAI_EMOTION_ANNOTATIONS to the studyforrest-data-annotations folder)"
        )
    return SHARED_ANNOTATIONS
