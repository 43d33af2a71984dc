"""`wb train`: margin softmax on labeled rows plus the UIR loss on unlabeled rows.

Single process on CPU or CUDA, or many processes with torchrun (gloo on CPU,
nccl on GPU; rank 0 reads the manifest, broadcasts the data plan, and writes
checkpoints, metrics and the manifest). Checkpoints hold model, head,
optimizer, scheduler and step; sampling depends only on (seed, step), so a
resumed run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from workbench.errors import WorkbenchError
from workbench.manifest.train_runs import BEST, FINAL, LATEST, checkpoint_dir
from workbench.train import checkpoint
from workbench.train.backbones import build_backbone, normalise_input
from workbench.train.config import TrainConfig
from workbench.train.data import LabeledFaces, LabeledPlan, ResumableBatches, UnlabeledFaces, UnlabeledPlan
from workbench.train.heads import MarginHead
from workbench.train.losses import open_set_loss
from workbench.train.onnx_backbone import OnnxBackbone

ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass
class DataPlan:
    labeled: LabeledPlan
    unlabeled: UnlabeledPlan
    snapshot: dict[str, Any] = field(default_factory=dict)


class FaceModel(nn.Module):
    """Backbone and head in one module, so DDP synchronises both."""

    def __init__(self, config: TrainConfig, num_classes: int):
        super().__init__()
        if config.backbone == "onnx":
            norm = tuple(config.onnx_norm) if config.onnx_norm else None
            self.backbone: nn.Module = OnnxBackbone.load(config.onnx_path, norm)
        else:
            self.backbone = build_backbone(config.backbone, config.num_features, config.width,
                                           config.input_size)
        self.head = MarginHead(config.num_features, num_classes, config.head, config.scale)
        self.freeze_bn = config.freeze_bn

    def phase(self, frozen: bool) -> None:
        """Training mode, except what must not move: the whole backbone while it is frozen (head
        warm-up), and BatchNorm statistics with --freeze-bn."""
        self.train()
        if frozen:
            self.backbone.eval()
        elif self.freeze_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm | OnnxBackbone):
                    module.eval()

    def checkpoint_extras(self) -> dict[str, torch.Tensor]:
        """What a checkpoint needs besides the state dict to rebuild the backbone."""
        if isinstance(self.backbone, OnnxBackbone):
            return {"onnx_graph": torch.frombuffer(bytearray(self.backbone.skeleton), dtype=torch.uint8)}
        return {}

    def forward(self, images: torch.Tensor, labels: torch.Tensor, kind: str, weight: float,
                amp: bool, frozen: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device_type = images.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp), \
                torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            embeddings = self.backbone(images)
        embeddings = embeddings.float()
        n = len(labels)
        scored = embeddings if kind != "none" else embeddings[:n]  # no unlabeled cosines for nothing
        cos = self.head.cosine(scored)
        margin = self.head.loss(cos[:n], labels)
        unknown = open_set_loss(kind, cos, n, self.head.s, scored) if len(cos) > n else margin.new_zeros(())
        return margin + weight * unknown, margin.detach(), unknown.detach()


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warmup, then polynomial (power 2) decay to zero at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** 2
    return factor


class NonFiniteLoss(WorkbenchError):
    pass


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return Distributed(dist.get_rank(), dist.get_world_size(), local)


def free_memory(device: torch.device) -> int:
    """Bytes free for this process: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def training_device(spec: str, info: Distributed) -> torch.device:
    """The process's device: `cuda:N` as given in one process; under torchrun, the local rank's GPU."""
    if not spec.startswith("cuda"):
        return torch.device("cpu")
    if info.world == 1 and ":" in spec:
        return torch.device(spec)
    return torch.device(f"cuda:{info.local_rank}")


def loader_workers(config: TrainConfig, info: Distributed) -> int:
    """DataLoader workers per process: as given, else the cores this process may use (a GPU
    eats 5-10k decoded crops a second), leaving one for the training step."""
    if config.num_workers is not None:
        return config.num_workers
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world)))
    return max(0, min(16, (os.cpu_count() or 2) // max(1, local) - 1))


def _fault(step: int, rank: int) -> float:
    """Test hook: WB_TRAIN_FAULT=nan:RANK:STEP makes that rank's loss non-finite at that step
    (a failure on one rank only, which the ranks must agree on)."""
    spec = os.environ.get("WB_TRAIN_FAULT", "")
    kind, _, where = spec.partition(":")
    return math.nan if kind == "nan" and where == f"{rank}:{step}" else 1.0


def run_training(
    config: TrainConfig, plan: DataPlan, run_dir: Path, *, resume: bool = False,
    dist_info: Distributed | None = None, progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The training loop proper; `run_dir` holds checkpoints and metrics.

    The host waits for the device only at check points (every `log_every` steps, before each
    checkpoint and at the end): losses and a count of non-finite steps are summed on the device
    and, under torchrun, all-reduced there, so every rank sees a failure on any rank at the same
    step and all stop together (no rank is left waiting in an all-reduce).
    """
    info = dist_info or Distributed()
    device = training_device(config.device, info)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels once
    torch.manual_seed(config.seed)
    config.check_memory(plan.labeled.num_classes, free_memory(device))
    model = FaceModel(config, plan.labeled.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.init and config.backbone != "onnx":
        checkpoint.load_into(model.backbone, config.init)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}] if config.backbone_lr_mult == 1 else [
        {"params": list(model.backbone.parameters()), "lr": config.lr * config.backbone_lr_mult},
        {"params": list(model.head.parameters())}]
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    n_unlabeled = round(config.batch_size * config.unlabeled_ratio) if config.uir_loss != "none" or \
        config.unlabeled_ratio > 0 else 0
    if len(plan.unlabeled.crop_paths) == 0:
        n_unlabeled = 0
    n_labeled = config.batch_size - n_unlabeled
    batches = ResumableBatches(len(plan.labeled.labels), n_labeled, config.seed, info.rank, info.world,
                               flip=config.flip)
    total = config.steps or max(1, math.ceil((config.epochs or 1) * batches.per_epoch))
    warmup = config.warmup_steps if config.warmup_steps is not None else min(total // 10, 2000)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total))
    ckpt_dir = checkpoint_dir(run_dir)
    start = 0
    if resume:
        state = checkpoint.read(ckpt_dir / LATEST, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]

    def ddp(frozen: bool) -> nn.Module:
        if info.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(  # a frozen backbone has no grads to reduce
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=frozen)

    was_frozen = start < config.freeze_backbone_steps
    wrapped = ddp(was_frozen)
    workers = loader_workers(config, info)
    labeled_loader = DataLoader(
        LabeledFaces(plan.labeled, config.input_size),
        batch_sampler=ResumableBatches(len(plan.labeled.labels), n_labeled, config.seed, info.rank,
                                       info.world, start, config.flip),
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    unlabeled_iter = None
    if n_unlabeled:
        unlabeled_iter = iter(DataLoader(
            UnlabeledFaces(plan.unlabeled, config.input_size),
            batch_sampler=ResumableBatches(len(plan.unlabeled.crop_paths), n_unlabeled, config.seed + 1,
                                           info.rank, info.world, start, config.flip),
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0))
    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    saver = None
    if info.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start)
        saver = checkpoint.Checkpointer(ckpt_dir, config.keep_checkpoints, LATEST, FINAL, BEST)

    def save(step: int, loss: float | None = None, final: bool = False) -> None:
        if saver is not None:
            saver.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "step": step, "config": asdict(config),
                        "num_classes": plan.labeled.num_classes, **model.checkpoint_extras()},
                       step, loss, final)

    amp = config.amp == "bf16"
    last: dict[str, float] = {}
    step = checked = start
    sums = torch.zeros(4, device=device)  # loss, margin loss, UIR loss, non-finite steps: since the check
    tic, seen = time.perf_counter(), 0
    labeled_iter = iter(labeled_loader)

    def check() -> None:
        """The one host sync of an interval: agree across ranks, stop on a non-finite loss, log."""
        nonlocal checked, tic, seen, last
        values = sums.clone()
        if info.world > 1:
            dist.all_reduce(values)
        loss_sum, margin_sum, uir_sum, bad = values.tolist()
        sums.zero_()
        if bad:
            raise NonFiniteLoss(
                f"loss became non-finite between steps {checked} and {step} ({int(bad)} of "
                f"{(step - checked) * info.world} rank-steps); the last good checkpoint is "
                f"{ckpt_dir / LATEST}; lower --lr or check the data")
        n = max(1, (step - checked) * info.world)
        last = {"step": step, "loss": loss_sum / n, "margin_loss": margin_sum / n, "uir_loss": uir_sum / n,
                "lr": scheduler.get_last_lr()[0]}
        last["images_per_s"] = seen / max(time.perf_counter() - tic, 1e-9)
        last["eta_s"] = (total - step) * config.batch_size * info.world / last["images_per_s"]
        if device.type == "cuda":  # a host-side counter: no sync
            last["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        checked, tic, seen = step, time.perf_counter(), 0
        if info.main:
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(last) + "\n")
            for key, value in last.items():
                if key != "step":
                    writer.add_scalar(f"train/{key}", value, step)

    try:
        while step < total:
            frozen = step < config.freeze_backbone_steps
            if frozen != was_frozen:  # warm-up over: every parameter has a gradient from now on
                wrapped, was_frozen = ddp(frozen), frozen
            model.phase(frozen)
            images, labels = next(labeled_iter)
            x = normalise_input(images.to(device, non_blocking=True))
            if unlabeled_iter is not None:  # each batch to the device from its own pinned memory
                x = torch.cat([x, normalise_input(next(unlabeled_iter).to(device, non_blocking=True))])
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            loss, margin, unknown = wrapped(x, labels.to(device, non_blocking=True), config.uir_loss,
                                            config.uir_weight, amp, frozen)
            loss = loss * _fault(step, info.rank)
            finite = torch.isfinite(loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            seen += len(x) * info.world
            sums += torch.stack([torch.where(finite, loss.detach(), 0.0), margin.nan_to_num(0.0),
                                 unknown.nan_to_num(0.0), (~finite).float()])
            at_checkpoint = step % config.checkpoint_every == 0 and step < total
            if step % config.log_every == 0 or step == total or at_checkpoint:
                check()
            if progress and info.main:
                progress(step, total, last)
            if at_checkpoint:
                save(step, last.get("loss"))
    except KeyboardInterrupt:
        if step == checked:  # a state known to be good
            save(step, final=False)
            if saver is not None:
                saver.wait()
        raise
    finally:
        if writer is not None:
            writer.close()
        if saver is not None and sys.exc_info()[0] is not None:
            with contextlib.suppress(Exception):
                saver.close()
    save(step, last.get("loss"), final=True)
    if saver is not None:
        saver.close()
    result = {"steps": step, "total_steps": total, **{k: v for k, v in last.items() if k != "step"}}
    if info.world > 1:
        digests: list[str | None] = [None] * info.world
        dist.all_gather_object(digests, weights_digest(model))
        result["rank_weight_digests"] = digests
    return result


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter: equal across ranks after synchronous training.

    BatchNorm running statistics are left out: DDP broadcasts them from rank 0
    before each forward, so after the last step they are rank-local.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resume point (written after the last checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))
