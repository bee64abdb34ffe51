"""Shared test set-up: no network, caches in one place, and a local Ray runtime per test module."""

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


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray runtime for one test module (each such module runs in its own pytest process)."""
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(tmp_path_factory.mktemp("torch_ext")))
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
