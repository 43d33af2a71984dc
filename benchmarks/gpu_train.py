"""GPU check of the real loop: `wb` itself on an MS1MV2-shaped set (85,742 classes), r50 in bf16.

Stages, each reported passed or failed with its figure:

1. data: a synthetic RecordIO `train.rec/.idx/property` (85,742 classes, 95,742 records from a
   pool of generated 112x112 JPEGs whose bytes repeat) and a folder of aligned web crops;
2. `wb labeled add` and `wb ingest --aligned`;
3. `wb train` (no UIR yet), interrupted with Ctrl-C after its first checkpoint, then run again:
   it resumes from that checkpoint and finishes;
4. `wb overlap`, `wb dedupe` and `wb split` with that run's checkpoint as the embedding model;
5. `wb train --uir` with the real loaders: images/s of the real loop and peak GPU memory;
6. `wb eval` and `wb score` of a thousand faces;
7. beside them, the ceilings: r50 training on synthetic tensors already on the GPU, embedding
   alone, and the loader's decode rate.

    bash benchmarks/gpu_train.sh        (a CUDA machine; see the script for offline machines)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--backbone", "r18", "--width", "0.125", "--input-size", "32", "--embedding-size", "32"]
RESULTS: list[tuple[str, bool, str]] = []


def stage(name: str, ok: bool, figure: str) -> None:
    RESULTS.append((name, ok, figure))
    print(f"[{'pass' if ok else 'FAIL'}] {name}: {figure}", flush=True)


def crop_pool(n: int, seed: int = 0) -> list[bytes]:
    """Face-sized JPEGs with some structure (smooth noise), as a crop pool whose bytes repeat."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(small).resize((112, 112), Image.BICUBIC).save(buf, "JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def write_data(root: Path, classes: int, web: int) -> tuple[Path, Path, int]:
    """RecordIO with a face per class (6 for the first 2,000: known probes for eval, and the
    identities overlap calibrates on), and web crops."""
    pool = crop_pool(512)
    sizes = np.ones(classes, np.int64)
    sizes[: min(2000, classes)] = 6
    labels = np.repeat(np.arange(classes), sizes)
    write_insightface_rec(root / "S" / "train.rec", ((int(label), pool[i % len(pool)])
                                                      for i, label in enumerate(labels)), num_classes=classes)
    webdir = root / "web"
    webdir.mkdir()
    for i, data in enumerate(crop_pool(web, seed=1)):
        (webdir / f"w{i:05d}.jpg").write_bytes(data)
    return root / "S", webdir, len(labels)


def wb(ws: Path, *args: str, timeout: float = 600) -> dict:
    """One `wb` command as a user runs it; its --json result."""
    proc = subprocess.run([sys.executable, "-m", "workbench", *args, "-w", str(ws), "--json"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"wb {' '.join(args)}: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def interrupted_then_resumed(ws: Path, args: list[str], timeout: float) -> tuple[dict, int]:
    """Start `wb train`, Ctrl-C it once a checkpoint exists, run it again: the step it resumed at."""
    cmd = [sys.executable, "-m", "workbench", "train", *args, "-w", str(ws), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if list((ws / "runs").glob("*/checkpoints/step_*.pt")):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    saved = max(int(p.stem.split("_")[1]) for p in (ws / "runs").glob("*/checkpoints/step_*.pt"))
    return wb(ws, "train", *args, timeout=timeout), saved


def train_rate(batch: int, steps: int, classes: int) -> tuple[float, float]:
    """The ceiling: r50 training steps on tensors already on the GPU (no loader, no host syncs)."""
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


@torch.no_grad()
def embed_rate(batch: int, steps: int) -> float:
    """Faces/s of r50 embedding alone (eval, bf16): what `wb embed`/`score` get from a GPU."""
    device = torch.device("cuda")
    model = FaceModel(TrainConfig(backbone="r50"), 10).backbone.to(device).eval()
    x = normalise_input(torch.randint(0, 256, (batch, 112, 112, 3), dtype=torch.uint8, device=device))
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x)
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def decode_rate(rec: Path, n: int, workers: int, batch: int) -> float:
    """Images/s the training loader decodes from the RecordIO (JPEG, flips, to tensors)."""
    plan = LabeledPlan(path=str(rec), format="rec", options={}, locators=[str(k) for k in range(1, n + 1)],
                       crop_paths=[None] * n, labels=np.zeros(n, np.int64), num_classes=1)
    loader = DataLoader(LabeledFaces(plan), batch_sampler=ResumableBatches(n, batch, 0),
                        num_workers=workers, persistent_workers=True)
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(n // batch - 1):
        images, _ = next(it)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def run(args: argparse.Namespace, root: Path) -> None:
    ws = root / "ws"
    t0 = time.perf_counter()
    rec, web, records = write_data(root, args.classes, args.web)
    stage("data", True, f"{records:,} records of {args.classes:,} classes, {args.web:,} web crops, "
                        f"{time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    labeled = wb(ws, "labeled", "add", "S", str(rec))
    ingested = wb(ws, "ingest", str(web), "--aligned", "--source", "web")
    stage("labeled add + ingest", labeled["identities"] == args.classes and ingested["faces"] == args.web,
          f"{labeled['images']:,} labeled, {ingested['faces']:,} web faces, {time.perf_counter() - t0:.0f} s")
    common = ["--labeled", "S", "--device", args.device,
              *(["--backbone", "r50", "--amp", "bf16"] if args.device == "cuda" else SMALL)]
    curator_args = [*common, "--unlabeled-ratio", "0", "--steps", str(args.curator_steps),
                    "--batch-size", str(args.batch // 2), "--checkpoint-every", str(args.curator_steps // 3)]
    t0 = time.perf_counter()
    curator, saved = interrupted_then_resumed(ws, curator_args, args.stage_timeout)
    resumed_ok = curator["steps"] == args.curator_steps and 0 < saved < args.curator_steps
    stage("checkpoint, Ctrl-C, resume", resumed_ok,
          f"resumed at step {saved}, finished {curator['steps']}, {time.perf_counter() - t0:.0f} s")
    model = f"ckpt:{Path(curator['run_dir']) / 'checkpoints' / 'final.pt'}"
    t0 = time.perf_counter()
    overlap = wb(ws, "overlap", "--labeled", "S", "--model", model, "--per-identity", "2", "--no-copies")
    wb(ws, "dedupe", "--model", model, "--labeled", "S")
    split = wb(ws, "split", "--eval-unknown", "0.2", "--min-quality", "0")
    splits = split["splits"]
    stage("overlap + dedupe + split (ckpt model)", splits.get("train_unlabeled", 0) > 0,
          f"{overlap['faces']:,} faces, splits {splits}, {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    uir = wb(ws, "train", "--uir", *common, "--steps", str(args.steps), "--batch-size", str(args.batch),
             "--checkpoint-every", str(args.steps), timeout=args.stage_timeout)
    real = uir.get("images_per_s", 0.0)
    stage("train --uir, real loaders", uir["steps"] == args.steps,
          f"{real:.0f} images/s at batch {args.batch}, peak GPU {uir.get('peak_gpu_gib', 0):.1f} GiB, "
          f"loss {uir.get('loss', float('nan')):.2f}, {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    evaluation = wb(ws, "eval", uir["run_id"])
    scored = wb(ws, "score", uir["run_id"], "--set", "unlabeled")
    open_set = evaluation["open_set"]
    stage("eval + score", scored["faces"] >= min(1000, args.web) and "auroc_msp" in open_set,
          f"{open_set.get('known_probes')} known / {open_set.get('unknown_probes')} unknown probes over "
          f"{args.classes:,} classes, {scored['scored_now']:,} faces scored, "
          f"{time.perf_counter() - t0:.0f} s")
    if args.device != "cuda":
        return  # a CPU dry run of the stages above
    ceiling, peak = train_rate(args.batch, args.ceiling_steps, args.classes)
    stage("synthetic ceiling", True, f"{ceiling:.0f} images/s (tensors on the GPU), peak {peak:.1f} GiB; "
                                     f"real loop at {real / ceiling:.0%} of it")
    stage("embedding alone", True, f"r50 bf16: {embed_rate(512, args.ceiling_steps):.0f} faces/s")
    decoded = decode_rate(rec / "train.rec", min(records, 60_000), args.workers, 256)
    stage("loader decode", True, f"{decoded:.0f} images/s with {args.workers} workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=85_742)
    parser.add_argument("--web", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--curator-steps", type=int, default=90)
    parser.add_argument("--ceiling-steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--stage-timeout", type=float, default=300)
    parser.add_argument("--out", type=Path, default=None, help="keep the data and workspace here")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the wb stages, small model")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for a GPU machine (--device cpu for a dry run)")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (dry run)"
    print(f"device: {name}, torch {torch.__version__}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            run(args, root)
        except Exception as exc:  # a failed stage is a result: say which, and what it said
            stage("stopped", False, f"{type(exc).__name__}: {str(exc)[-800:]}")
    print("\n| stage | result | figure |\n| --- | --- | --- |")
    for name, ok, figure in RESULTS:
        print(f"| {name} | {'pass' if ok else 'FAIL'} | {figure} |")
    sys.exit(0 if all(ok for _, ok, _ in RESULTS) else 1)


if __name__ == "__main__":
    main()
