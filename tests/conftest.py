"""Shared test fixtures: per-test seeding, the ../shared data, device selection."""

from __future__ import annotations

import os
import pathlib
import zlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI, developers); FASTDENOISE_SHARED points elsewhere (the GPU
# machine, which receives only the working tree: carry a copy in an ignored folder, see
# scripts/gpu_check.sh).
SHARED = pathlib.Path(os.environ.get("FASTDENOISE_SHARED") or REPO.parent / "shared")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs every test, reproducible from the test's name."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(seed)
    return seed


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read real data from ../shared beside the checkout "
                    "(or from FASTDENOISE_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
