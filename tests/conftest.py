"""Shared fixtures: the real-faces folder (skip when absent) and generated images."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LFW = Path(os.environ.get("WB_LFW150", ROOT.parent / "shared" / "data" / "lfw150"))
SHARED = ROOT.parent / "shared"
MODELS = Path(os.environ.get("WB_MODELS", SHARED / "models"))
# FiftyOne's database for this test session only (inherited by the `wb` processes tests start),
# removed at exit: registered before FiftyOne is imported, so this runs after FiftyOne's own exit
# handler has stopped the database it keeps there (removing it earlier made mongod abort)
FIFTYONE_DIR = None if "FIFTYONE_DATABASE_DIR" in os.environ else tempfile.mkdtemp(prefix="wb-test-fiftyone-")
if FIFTYONE_DIR:
    os.environ["FIFTYONE_DATABASE_DIR"] = FIFTYONE_DIR
    atexit.register(shutil.rmtree, FIFTYONE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not LFW.is_dir():
        pytest.skip(f"real faces not found at {LFW} (set WB_LFW150 or provide ../shared/data/lfw150)")
    return LFW


def shared_model(name: str) -> Path:
    """A pretrained model file from ../shared/models; the test skips with a message without it."""
    path = MODELS / name
    if not path.is_file():
        pytest.skip(f"pretrained model not found at {path} (set WB_MODELS or provide ../shared/models)")
    return path


def noise_image(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    """A smooth random RGB image: distinct per seed, stable under re-encoding."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture()
def aligned_folder(tmp_path: Path) -> Path:
    """Twelve distinct 112x112 'aligned crops' in two identity folders."""
    root = tmp_path / "aligned"
    for i in range(12):
        folder = root / f"id{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        noise_image(i).save(folder / f"{i:03d}.jpg", quality=92)
    return root
