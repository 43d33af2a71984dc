"""GPU training check: r50 at 112 px, bf16 autocast, batch 512, synthetic data; the fine-tuning recipe
at r50 and r100; embedding rates at r50 and r100; decode rate; memory.

    bash benchmarks/gpu_train.sh      (on a CUDA machine; prints one line per figure)
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from workbench.formats.recordio import write_insightface_rec
from workbench.train.backbones import normalise_input
from workbench.train.config import TrainConfig
from workbench.train.data import LabeledFaces, LabeledPlan, ResumableBatches
from workbench.train.loop import FaceModel


def train_rate(batch: int, steps: int, classes: int) -> tuple[float, float]:
    device = torch.device("cuda")
    config = TrainConfig(backbone="r50", uir_loss="reference")
    model = FaceModel(config, classes).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    images = torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, classes, (batch * 3 // 4,), device=device)
    x = normalise_input(images).contiguous(memory_format=torch.channels_last)
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 10):
        if i == 10:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss, _, _ = model(x, labels, "reference", 0.1, True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**30


def finetune_rates(backbone: str, steps: int, classes: int) -> tuple[float, float]:
    """The paper's fine-tuning recipe (96 labeled + 32 unlabeled, UIR weight 0.1): images/s of the
    head warm-up (backbone frozen, no backward through it) and of full fine-tuning at lr x 0.1."""
    device = torch.device("cuda")
    config = TrainConfig(backbone=backbone, uir_loss="kl-uniform")
    model = FaceModel(config, classes).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([{"params": list(model.backbone.parameters()), "lr": 0.01},
                                 {"params": list(model.head.parameters())}], lr=0.1, momentum=0.9)
    images = torch.randint(0, 256, (128, 112, 112, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, classes, (96,), device=device)
    x = normalise_input(images).contiguous(memory_format=torch.channels_last)
    rates = []
    for frozen in (True, False):
        model.phase(frozen)
        for i in range(steps + 5):
            if i == 5:
                torch.cuda.synchronize()
                start = time.perf_counter()
            loss, _, _ = model(x, labels, "kl-uniform", 0.1, True, frozen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize()
        rates.append(128 * steps / (time.perf_counter() - start))
    return rates[0], rates[1]


@torch.no_grad()
def embed_rate(backbone: str, batch: int, steps: int) -> float:
    """Faces/s of embedding alone (eval mode, bf16): what `wb embed`/`wb score`/`wb audit labeled`
    get from a GPU recogniser (the MS1MV2 projections assume 5,000 faces/s)."""
    device = torch.device("cuda")
    model = FaceModel(TrainConfig(backbone=backbone), 10).backbone.to(device).eval()
    x = normalise_input(torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, device=device))
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def decode_rate(n: int, workers: int, batch: int) -> float:
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)).resize((112, 112)).save(
            buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        rec = Path(tmp) / "train.rec"
        write_insightface_rec(rec, ((i // 50, pool[i % 64]) for i in range(n)))
        plan = LabeledPlan(path=str(rec), format="rec", options={},
                           locators=[str(k) for k in range(1, n + 1)], crop_paths=[None] * n,
                           labels=np.arange(n) // 50, num_classes=n // 50)
        loader = DataLoader(LabeledFaces(plan), batch_sampler=ResumableBatches(n, batch, 0),
                            num_workers=workers, persistent_workers=True)
        it = iter(loader)
        next(it)
        start, seen = time.perf_counter(), 0
        for _ in range(n // batch - 1):
            images, _ = next(it)
            seen += len(images)
        return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--classes", type=int, default=85742)
    parser.add_argument("--decode-images", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rate, peak = train_rate(args.batch, args.steps, args.classes)
    print(f"r50 112px bf16 train, batch {args.batch}, {args.classes} classes: {rate:.0f} images/s")
    print(f"peak GPU memory: {peak:.1f} GiB")
    for backbone in ("r50", "r100"):
        warm, full = finetune_rates(backbone, args.steps, args.classes)
        print(f"{backbone} fine-tune (96 labeled + 32 unlabeled, kl-uniform 0.1, bf16): head warm-up "
              f"{warm:.0f} images/s, full {full:.0f} images/s")
    for backbone in ("r50", "r100"):
        rate = embed_rate(backbone, 512, args.steps)
        print(f"{backbone} embedding (eval, bf16, batch 512): {rate:.0f} faces/s")
    print(f"data loader decode ({args.workers} workers, RecordIO JPEG 112px): "
          f"{decode_rate(args.decode_images, args.workers, 256):.0f} images/s")


if __name__ == "__main__":
    main()
