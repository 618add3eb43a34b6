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
    """The published studyforrest annotations, or a skip saying where they were looked for.

    Under CI (``CI=true``) a missing folder fails the tests that need it: CI must test the
    parsers on the real files, not skip them silently.
    """
    if not (SHARED_ANNOTATIONS / "raw").is_dir():
        reason = (
            f"real studyforrest annotations not found at {SHARED_ANNOTATIONS} "
            "(set MONAI_EMOTION_ANNOTATIONS to the studyforrest-data-annotations folder)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true: the real annotations are required", pytrace=False)
        pytest.skip(reason)
    return SHARED_ANNOTATIONS
