"""`wb train` orchestration: plan the data from the manifest, record the run, train.

Under torchrun only rank 0 touches the manifest; the plan is broadcast to the
other ranks. The manifest is not held during training (other commands keep
working); the run is recorded at the start and updated at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import torch.distributed as dist

from workbench.errors import WorkbenchError
from workbench.labeled import registry
from workbench.labeled.access import LabeledSet
from workbench.manifest import train_runs
from workbench.manifest.query import transaction
from workbench.manifest.runs import finish_detached, new_run_id, open_run, start_detached, versions
from workbench.manifest.workspace import Workspace
from workbench.results import Result
from workbench.train.config import TrainConfig
from workbench.train.data import LabeledPlan, UnlabeledPlan, snapshot_digest
from workbench.train.loop import DataPlan, ProgressFn, init_distributed, run_training
from workbench.train.onnx_backbone import OnnxBackbone
from workbench.weights import weights_file


@dataclass
class TrainResult(Result):
    """`wb train`: the run, its steps, the last logged losses, learning rate and speed."""

    run_id: str
    run_dir: str
    steps: int
    total_steps: int
    last: dict[str, float] = field(default_factory=dict)
    reused: bool = False
    rank_weight_digests: list[str] | None = None  # torchrun: equal on every rank after training

    @classmethod
    def of(cls, run_id: str, run_dir: Path | str, metrics: dict[str, Any],
           reused: bool = False) -> TrainResult:
        last = {k: v for k, v in metrics.items()
                if k not in ("steps", "total_steps", "rank_weight_digests", "error")}
        return cls(run_id, str(run_dir), metrics.get("steps", 0), metrics.get("total_steps", 0), last,
                   reused, metrics.get("rank_weight_digests"))

    def as_dict(self) -> dict[str, Any]:
        flat = {"run_id": self.run_id, "run_dir": self.run_dir, "steps": self.steps,
                "total_steps": self.total_steps, **self.last, "reused": self.reused}
        return flat | ({"rank_weight_digests": self.rank_weight_digests} if self.rank_weight_digests else {})


def default_labeled(con: duckdb.DuckDBPyConnection) -> str:
    if (name := registry.only_one(con)) is not None:
        return name
    names = [r[0] for r in con.execute("SELECT name FROM labeled_sets ORDER BY name").fetchall()]
    raise WorkbenchError("pass --labeled NAME: the workspace has "
                         + (f"{len(names)} labeled sets ({', '.join(names)})" if names else "none"))


def holdout_positions(labels: np.ndarray, per_identity: int, min_samples: int) -> np.ndarray:
    """Positions held out as known probes: the last `per_identity` samples of each identity
    with at least `min_samples` (deterministic, the same for every seed, so runs compare)."""
    if per_identity <= 0:
        return np.empty(0, np.int64)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    ends = np.searchsorted(sorted_labels, sorted_labels, side="right")
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    size, rank_from_end = ends - starts, ends - 1 - np.arange(len(order))
    return np.sort(order[(size >= min_samples) & (rank_from_end < per_identity)])


def plan_data(ws: Workspace, con: duckdb.DuckDBPyConnection, config: TrainConfig) -> DataPlan:
    labeled = LabeledSet(ws, con, config.labeled or default_labeled(con))
    config.labeled = labeled.name
    labels = labeled.labels.astype(np.int64)
    held = holdout_positions(labels, config.holdout_per_identity, config.holdout_min_samples)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    crops = labeled.samples.column("crop_rel").to_pylist()
    locators = labeled.samples.column("locator").to_pylist()
    lplan = LabeledPlan(
        path=str(labeled.path), format=labeled.format, options=labeled.options,
        locators=[locators[i] for i in keep],
        crop_paths=[None if crops[i] is None else str(ws.root / crops[i]) for i in keep],
        labels=labels[keep], num_classes=len(labeled.identities))
    sample_idx = labeled.samples.column("sample_idx").to_numpy()
    rows = con.execute("SELECT s.face_id, f.crop_rel FROM splits s JOIN faces f USING (face_id) "
                       "WHERE s.split = ? ORDER BY s.face_id", [config.unlabeled_split]).fetchall()
    if config.uir_loss != "none" and not rows:
        raise WorkbenchError(f"no faces in split {config.unlabeled_split!r}: run `wb split` first "
                             "(or train without --uir)")
    uplan = UnlabeledPlan([r[0] for r in rows], [str(ws.root / r[1]) for r in rows])
    snapshot = {
        "labeled_set": labeled.name, "labeled_samples": len(lplan.labels),
        "holdout_sample_idx": sample_idx[held].tolist(),
        "labeled_digest": snapshot_digest(lplan.locators), "identities": lplan.num_classes,
        "unlabeled_split": config.unlabeled_split, "unlabeled_faces": len(rows),
        "unlabeled_digest": snapshot_digest(uplan.face_ids),
    }
    return DataPlan(lplan, uplan, snapshot)


def prepared(config: TrainConfig) -> TrainConfig:
    """`--init onnx:PATH`: the backbone is that graph, so its embedding width, input size and input
    scaling are the model's (recorded in the config, so a run is reproducible from it)."""
    resolved = config.backbone == "onnx" and config.onnx_norm  # train_or_reuse, then run_train
    if not (config.init and config.init.startswith("onnx:")) or resolved:
        return config
    path = str(weights_file(config.onnx_path))
    backbone = OnnxBackbone.load(path, tuple(config.onnx_norm) if config.onnx_norm else None)
    return replace(config, init=f"onnx:{path}", backbone="onnx", num_features=backbone.output_dim(),
                   input_size=backbone.input_size, width=1.0, onnx_norm=list(backbone.norm))


SLOW_RUN_S = 30 * 60


def slow_run_hint(config: TrainConfig, eta_s: float) -> str | None:
    """After the first measured steps on a CPU: how long the rest will take, and cheaper choices,
    instead of hours of silence (the defaults, r50 at 112 px, are a GPU recipe)."""
    if not config.device.startswith("cpu") or eta_s < SLOW_RUN_S:
        return None
    cheaper = []
    if config.backbone != "onnx":
        cheaper.append("fine-tune a pretrained recogniser (--init onnx:PATH, e.g. a MobileFaceNet, "
                       "with --freeze-backbone-steps and --backbone-lr-mult 0.1)")
        if config.backbone != "mbf":
            cheaper.append("a small backbone (--backbone mbf)")
    cheaper.append("fewer --steps")
    cheaper.append("a GPU (--device cuda --amp bf16)")
    hours = eta_s / 3600
    took = f"{hours:.1f} h" if hours >= 1 else f"{eta_s / 60:.0f} min"
    return f"at the measured speed the rest of this run takes about {took} on this CPU; cheaper: " + \
        "; ".join(cheaper)


def run_train(ws: Workspace, config: TrainConfig, *, resume: str | None = None,
          progress: ProgressFn | None = None) -> TrainResult:
    """Train (or, with `resume`, continue) a run; under torchrun every rank calls this.

    Rank 0 records the run (`train_runs` and a detached row of `runs`) and broadcasts the plan;
    the outcome (`done`, `failed` with its reason, `interrupted`) is recorded however it ends.
    Returns: `TrainResult`. Raises: `WorkbenchError` for a bad recipe or missing data."""
    if resume is None:
        config = prepared(config)
    config.validate()
    info = init_distributed(_device_of(ws, config, resume))
    payload: list[Any] = [None]
    if info.main:
        payload[0] = _start(ws, config, resume)
    if info.world > 1:
        dist.broadcast_object_list(payload, src=0)
    run_id, plan, config, run_dir = payload[0]
    status, error, result = "failed", None, {}
    try:
        result = run_training(config, plan, run_dir, resume=resume is not None, dist_info=info,
                              progress=progress)
        status = "done"
    except KeyboardInterrupt:
        status, error = "interrupted", "KeyboardInterrupt (checkpoint saved)"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if info.main:
            _finish(ws, run_id, status, error, result)
        if info.world > 1:
            if status == "done":
                dist.barrier()  # no rank tears down gloo while another still uses it
            dist.destroy_process_group()
    return TrainResult.of(run_id, run_dir, result)


def _start(ws: Workspace, config: TrainConfig, resume: str | None) -> tuple:
    with ws.lock("train"), ws.connect() as con:
        if resume:
            stored = train_runs.require(con, resume)
            config = TrainConfig(**stored.config)
            run_id, run_dir = resume, stored.run_dir
            if not (stored.checkpoint_dir / train_runs.LATEST).exists():
                raise WorkbenchError(f"run {resume} has no checkpoint to resume from")
        else:
            run_id = new_run_id("train")
            run_dir = train_runs.run_folder(ws.root, run_id)
        plan = plan_data(ws, con, config)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
        with transaction(con):
            if resume:
                train_runs.mark_training(con, run_id)
            else:
                train_runs.insert(con, run_id, asdict(config), plan.snapshot, versions(), run_dir)
            start_detached(con, run_id, "train", {"resume": resume, **asdict(config)})
        return run_id, plan, config, run_dir


def _device_of(ws: Workspace, config: TrainConfig, resume: str | None) -> str:
    """The device a run trains on, known before the process group starts (every rank reads it):
    a resumed run's is its stored recipe's, not the command line's default."""
    if resume is not None:
        stored = train_runs.run_folder(ws.root, resume) / "config.json"
        try:
            return str(json.loads(stored.read_text()).get("device", config.device))
        except (OSError, ValueError):
            return config.device
    return config.device


RUN_STATUS = {"done": "ok", "failed": "failed", "interrupted": "interrupted"}  # train_runs -> runs


def _finish(ws: Workspace, run_id: str, status: str, error: str | None, result: dict[str, Any]) -> None:
    """Record the outcome in `train_runs` and `runs` together (manifest/runs.py waits for the lock)."""
    metrics = {**result, **({"error": error} if error else {})}
    finish_detached(ws, run_id, RUN_STATUS[status], {"steps": result.get("steps")}, error,
                    also=lambda con: train_runs.finish(con, run_id, status, result.get("steps"), metrics))


def run_train_command(ws: Workspace, config: TrainConfig, *, resume: str | None = None, new: bool = False,
                      progress: ProgressFn | None = None) -> TrainResult | None:
    """`wb train`: resume `resume`; else, in one process and without `new`, reuse or resume a run
    of this recipe on the same data (`train_or_reuse`); else train. Under torchrun every rank
    trains (a choice of reuse per rank could differ); ranks other than 0 return None."""
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if resume is None and not new and not under_torchrun:
        result = train_or_reuse(ws, config, progress=progress)
    else:
        result = run_train(ws, config, resume=resume, progress=progress)
    return result if int(os.environ.get("RANK", "0")) == 0 else None


def train_or_reuse(ws: Workspace, config: TrainConfig, *, progress: ProgressFn | None = None
                   ) -> TrainResult:
    """`wb train` without `--new`: reuse a finished run of this recipe on the same data, resume
    an interrupted one, or train. One process only: under torchrun every rank trains."""
    config = prepared(config)
    wanted = {k: v for k, v in asdict(config).items() if v is not None}
    digests = ("labeled_digest", "unlabeled_digest") if config.unlabeled_ratio > 0 else ("labeled_digest",)
    with ws.connect(read_only=True) as con:
        data = plan_data(ws, con, replace(config)).snapshot
        runs = train_runs.newest_first(con)
    defaults = asdict(TrainConfig())  # fields added since a run was recorded held their defaults then
    for run in runs:
        if any({**defaults, **run.config}.get(k) != v for k, v in wanted.items()) or any(
                run.snapshot.get(k) != data[k] for k in digests):
            continue
        if run.status == "done":
            with open_run(ws, "train", {"reused": run.run_id}) as (_, record):
                record.counts = {"reused": run.run_id}
            return TrainResult.of(run.run_id, run.run_dir, run.metrics, reused=True)
        if run.status == "interrupted":
            return run_train(ws, TrainConfig(), resume=run.run_id, progress=progress)
    return run_train(ws, config, progress=progress)
