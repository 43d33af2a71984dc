"""Training data: labeled and unlabeled face streams with exactly resumable sampling.

Sampling and flips depend only on (seed, epoch, position), never on global RNG
state, so a run resumed at step k sees exactly the batches the uninterrupted
run would have seen. Each process (rank) gets its own shard of every epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from workbench.formats.images import decode_crop
from workbench.formats.labeled import LabeledSource, open_registered


@dataclass(frozen=True)
class LabeledPlan:
    """Everything a worker needs to read the labeled samples, without the manifest."""

    path: str
    format: str
    options: dict
    locators: list[str]
    crop_paths: list[str | None]  # stored crops for unaligned sets
    labels: np.ndarray
    num_classes: int


@dataclass(frozen=True)
class UnlabeledPlan:
    face_ids: list[str]
    crop_paths: list[str]


def snapshot_digest(items: list[str]) -> str:
    """A short digest of the data a run trained on, recorded with the run."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class LabeledFaces(Dataset):
    def __init__(self, plan: LabeledPlan, size: int = 112):
        self.plan, self.size = plan, size
        self._source: LabeledSource | None = None  # opened lazily in each worker process

    def __len__(self) -> int:
        return len(self.plan.labels)

    def _bytes(self, i: int) -> bytes:
        crop = self.plan.crop_paths[i]
        if crop is not None:
            return Path(crop).read_bytes()
        if self._source is None:
            self._source = open_registered(Path(self.plan.path), self.plan.format, self.plan.options)
        return self._source.read(self.plan.locators[i])

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        i, flip = item
        image = decode_crop(self._bytes(i), self.size)
        if flip:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.plan.labels[i])


class UnlabeledFaces(Dataset):
    def __init__(self, plan: UnlabeledPlan, size: int = 112):
        self.plan, self.size = plan, size

    def __len__(self) -> int:
        return len(self.plan.crop_paths)

    def __getitem__(self, item: tuple[int, bool]) -> torch.Tensor:
        i, flip = item
        image = decode_crop(Path(self.plan.crop_paths[i]).read_bytes(), self.size)
        if flip:
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image))


class ResumableBatches:
    """Endless batches of (index, flip) for one rank, starting at any global step.

    Epoch e is a permutation seeded by (seed, e), padded to a multiple of the
    world size and sharded rank::world; incomplete batches are dropped.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0, flip: bool = True):
        if n == 0 or batch == 0:
            raise ValueError("cannot sample batches from an empty set")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.flip = flip
        per_rank = -(-n // world)
        self.per_epoch = max(1, per_rank // batch)
        self.start_step = start_step

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        padded = np.resize(order, -(-self.n // self.world) * self.world)
        flips = rng.random(len(padded)) < 0.5 if self.flip else np.zeros(len(padded), bool)
        return padded[self.rank :: self.world], flips[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        epoch, offset = divmod(self.start_step, self.per_epoch)
        while True:
            order, flips = self._epoch(epoch)
            for b in range(offset, self.per_epoch):
                s = slice(b * self.batch, (b + 1) * self.batch)
                yield list(zip(order[s].tolist(), flips[s].tolist(), strict=True))
            epoch, offset = epoch + 1, 0
