"""Shared test set-up: no network, caches in one place, and a tiny model built once per session."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CDRA_RAY_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "cdra_ray"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
