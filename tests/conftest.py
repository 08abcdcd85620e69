"""Shared test setup: one torch thread (much faster on the small CI machine) and
the location of the golden data that sits beside the checkout."""
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"golden data folder not found at {SHARED}: CI keeps ../shared beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def hallo_golden(shared_dir) -> Path:
    return shared_dir / "golden" / "hallo"
