"""Fine-tuning a pretrained ONNX recogniser: conversion checked against onnxruntime, warm-up,
learning-rate multiplier, frozen BatchNorm, export round trip."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.conftest import shared_model
from tests.helpers import curated_workspace, wb, wb_json
from workbench.embed.models import ModelSpec, load_embedder
from workbench.errors import WorkbenchError
from workbench.manifest.workspace import Workspace
from workbench.train.checkpoint import Checkpoint, backbone_weights
from workbench.train.config import TrainConfig
from workbench.train.onnx_backbone import OnnxBackbone
from workbench.train.run import run_train, slow_run_hint

TINY = dict(batch_size=16, num_workers=0, lr=0.05, log_every=1, warmup_steps=0, uir_loss="reference")


class Tiny(nn.Module):
    """Every operator family recognition exports use: Conv (grouped too), BatchNorm 2-D and 1-D,
    PRelu, Relu, GlobalAveragePool, Flatten, Gemm, MatMul."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 2, 1, groups=8), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 16)
        self.proj = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.bn3 = nn.BatchNorm1d(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(torch.matmul(self.fc(torch.flatten(self.pool(x), 1)), self.proj))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Tiny]:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # statistics that are not the defaults, so a wrong one shows
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 112, 112),), str(path), opset_version=13,
                          dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                          input_names=["input"], output_names=["embedding"],
                          dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
    return path, model


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> Path:
    return curated_workspace(tmp_path_factory.mktemp("finetune"), identities=6, per_identity=5, web=16,
                             prefix="ft", seed=11)


def scaled(crops: np.ndarray) -> np.ndarray:
    return (crops.astype(np.float32).transpose(0, 3, 1, 2) - 127.5) / 127.5


def test_the_converted_graph_computes_what_onnxruntime_computes(tiny):
    path, _ = tiny
    backbone = OnnxBackbone.load(path).eval()
    x = scaled(np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3)).astype(np.uint8))
    expected = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        assert np.allclose(backbone(torch.from_numpy(x)).numpy(), expected, atol=1e-5)
    assert (backbone.input_size, backbone.output_dim()) == (112, 12)


def by_size(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return sorted((t.detach().reshape(-1) for t in tensors), key=lambda t: (len(t), float(t.sum())))


def test_in_training_mode_it_learns_and_keeps_statistics_as_torch_does(tiny):
    path, original = tiny
    backbone = OnnxBackbone.load(path).train()
    reference = Tiny()
    reference.load_state_dict(original.state_dict())
    reference.train()
    x = torch.from_numpy(scaled(np.random.default_rng(1).integers(0, 256, (6, 112, 112, 3)).astype(np.uint8)))
    out = backbone(x)
    assert torch.allclose(out, reference(x), atol=1e-5)  # batch statistics, as torch's train mode
    mine = by_size([b for k, b in backbone.named_buffers() if k.startswith("w") and b.is_floating_point()])
    theirs = by_size([b for k, b in reference.named_buffers() if "running" in k])
    assert len(mine) == len(theirs) == 6
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(mine, theirs, strict=True))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.params.values())
    assert len(backbone.params) == sum(1 for _ in reference.parameters())


def test_the_pretrained_mobilefacenet_converts_exactly():
    path = shared_model("mobilefacenet_128d.onnx")
    backbone = OnnxBackbone.load(path).eval()
    lfw = sorted(Path(path).parents[1].joinpath("data", "lfw150").rglob("*.jpg"))[:8]
    if not lfw:
        pytest.skip("../shared/data/lfw150 not found")
    import cv2

    crops = np.stack([cv2.resize(cv2.imread(str(p))[19:131, 19:131], (112, 112))[:, :, ::-1] for p in lfw])
    x = scaled(crops)
    expected = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        got = backbone(torch.from_numpy(x)).numpy()
    assert got.shape == (8, 128)
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


@pytest.mark.slow
def test_an_unsupported_operator_is_named_in_one_line(tmp_path, curated):
    node = onnx.helper.make_node("Erf", ["input"], ["embedding"])
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 112, 112])],
        [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, [1, 3, 112, 112])])
    path = tmp_path / "erf.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(WorkbenchError, match="unsupported operators Erf"):
        OnnxBackbone.load(path)
    proc = wb("train", "--init", f"onnx:{path}", "--steps", "1", "-w", str(curated), check=False)
    assert proc.returncode == 1 and "unsupported operators Erf" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def stored_backbone(result: dict) -> dict[str, torch.Tensor]:
    return backbone_weights(Checkpoint.open(Path(result.run_dir) / "checkpoints" / "final.pt").state)


@pytest.mark.slow
def test_a_frozen_warm_up_trains_the_head_only(tiny, curated):
    path, _ = tiny
    start = OnnxBackbone.load(path).state_dict()
    result = run_train(Workspace.at(curated), TrainConfig(init=f"onnx:{path}", steps=3,
                                                          freeze_backbone_steps=3, **TINY))
    after = stored_backbone(result)
    assert set(after) == set(start)
    assert all(torch.equal(after[k], start[k]) for k in start)  # weights and BatchNorm statistics
    ckpt = Checkpoint.open(Path(result.run_dir) / "checkpoints" / "final.pt")
    assert ckpt.config.backbone == "onnx" and ckpt.config.num_features == 12


@pytest.mark.slow
def test_backbone_lr_mult_scales_only_the_backbone_and_freeze_bn_keeps_statistics(tiny, curated):
    path, _ = tiny
    start = OnnxBackbone.load(path).state_dict()
    frozen = stored_backbone(run_train(Workspace.at(curated), TrainConfig(
        init=f"onnx:{path}", steps=3, backbone_lr_mult=0.0, freeze_bn=True, seed=1, **TINY)))
    assert all(torch.equal(frozen[k], start[k]) for k in start)
    moved = stored_backbone(run_train(Workspace.at(curated), TrainConfig(
        init=f"onnx:{path}", steps=3, backbone_lr_mult=1.0, freeze_bn=True, seed=1, **TINY)))
    weights = [k for k in start if k.startswith("params.")]
    stats = [k for k in start if not k.startswith("params.")]
    assert stats and all(torch.equal(moved[k], start[k]) for k in stats)
    assert any(not torch.equal(moved[k], start[k]) for k in weights)


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_and_exports_to_onnx_that_matches(tiny, curated, tmp_path):
    path, _ = tiny
    result = run_train(Workspace.at(curated), TrainConfig(init=f"onnx:{path}", steps=40, seed=2,
                                                          **{**TINY, "lr": 0.02}))
    losses = [json.loads(line)["margin_loss"] for line in
              (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    exported = wb_json("export-model", result.run_id, "--out", str(tmp_path / "tuned.onnx"),
                       "-w", str(curated))
    crops = np.random.default_rng(3).integers(0, 256, (4, 112, 112, 3)).astype(np.uint8)
    via_onnx = load_embedder(ModelSpec.parse(f"onnx:{exported['onnx']}")).embed(crops)
    via_torch = load_embedder(ModelSpec.parse(f"ckpt:{exported['checkpoint']}")).embed(crops)
    assert np.allclose(np.sum(via_onnx * via_torch, axis=1), 1.0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(exported["onnx"]).metadata_props}
    assert (meta["input_mean"], meta["input_std"]) == ("127.5", "127.5")


def test_a_slow_cpu_run_says_how_long_and_what_is_cheaper():
    hint = slow_run_hint(TrainConfig(), 2 * 3600)
    assert hint is not None and "2.0 h" in hint and "--init onnx:PATH" in hint and "--device cuda" in hint
    assert slow_run_hint(TrainConfig(), 10 * 60) is None
    assert slow_run_hint(TrainConfig(device="cuda"), 10 * 3600) is None
