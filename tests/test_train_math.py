"""Losses, heads and backbones against hand-computed values and the arcface_torch layout."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from workbench.train.backbones import DEPTHS, build_backbone
from workbench.train.heads import MarginHead, margin_logits
from workbench.train.losses import (
    ENERGY_IN,
    ENERGY_OUT,
    energy_hinges,
    entropic,
    magnitude,
    open_set_loss,
    uir_kl_uniform,
    uir_loss,
    uir_reference,
)


def naive_reference(logits: torch.Tensor) -> torch.Tensor:
    """The formula as written: -sum_i log softmax(p)_i - n log n."""
    n = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    return -torch.log_softmax(p, dim=1).sum(dim=1) - n * math.log(n)


def test_reference_matches_the_formula_by_hand():
    # n = 2, p = (1/4, 3/4): -[log(e^.25/(e^.25+e^.75)) + log(e^.75/(e^.25+e^.75))] - 2 log 2
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    lse = math.log(math.exp(0.25) + math.exp(0.75))
    expected = -((0.25 - lse) + (0.75 - lse)) - 2 * math.log(2)
    assert uir_reference(logits).item() == pytest.approx(expected, abs=1e-12)
    assert naive_reference(logits).item() == pytest.approx(expected, abs=1e-12)


def test_reference_bounds():
    assert uir_reference(torch.zeros(1, 1000)).item() == pytest.approx(0.0, abs=1e-6)
    spike = torch.zeros(1, 1000)
    spike[0, 3] = 1e4  # p is one-hot: n log1p((e - 1) / n) - 1, which tends to e - 2
    assert uir_reference(spike).item() == pytest.approx(1000 * math.log1p((math.e - 1) / 1000) - 1, abs=1e-5)
    assert uir_reference(spike).item() < math.e - 2


def test_reference_at_100k_classes_is_exact_in_fp32_where_the_naive_form_is_not():
    torch.manual_seed(0)
    logits64 = 64 * torch.empty(4, 100_000, dtype=torch.float64).uniform_(-0.3, 0.9)
    logits64[0, 17] = 64 * 1.0  # a confident sample
    truth = naive_reference(logits64)
    ours = uir_reference(logits64.float()).double()
    assert (ours - truth).abs().max().item() < 1e-4
    assert (naive_reference(logits64.float()).double() - truth).abs().max().item() > 1e-4


def test_kl_uniform_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert uir_kl_uniform(logits).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fn", [uir_reference, uir_kl_uniform])
def test_gradients_match_finite_differences(fn):
    logits = (torch.randn(3, 7, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: fn(z).sum(), (logits,))


@pytest.mark.parametrize("kind", ["reference", "kl-uniform"])
def test_finite_at_100k_classes_under_bf16_autocast(kind):
    torch.manual_seed(1)
    emb = torch.randn(8, 64, requires_grad=True)
    head = MarginHead(64, 100_000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = uir_loss(kind, head.cosine(emb), 64.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()


def test_none_loss_is_zero():
    assert uir_loss("none", torch.rand(4, 10), 64.0).item() == 0.0


def test_arcface_and_cosface_logits_by_hand():
    cos = torch.tensor([[0.6, 0.2, -0.1]])
    labels = torch.tensor([0])
    theta = math.acos(0.6)
    arc = margin_logits(cos, labels, 64.0, 1.0, 0.5, 0.0)
    assert arc[0, 0].item() == pytest.approx(64 * math.cos(theta + 0.5), rel=1e-5)
    assert arc[0, 1:].tolist() == pytest.approx([64 * 0.2, 64 * -0.1], rel=1e-6)
    cosface = margin_logits(cos, labels, 64.0, 1.0, 0.0, 0.4)
    assert cosface[0, 0].item() == pytest.approx(64 * 0.2, rel=1e-5)
    combined = margin_logits(cos, labels, 30.0, 0.9, 0.4, 0.15)
    assert combined[0, 0].item() == pytest.approx(30 * (math.cos(0.9 * theta + 0.4) - 0.15), rel=1e-5)


def test_arcface_fallback_past_pi_minus_m():
    cos = torch.tensor([[-0.95, 0.0]])  # theta > pi - 0.5
    out = margin_logits(cos, torch.tensor([0]), 1.0, 1.0, 0.5, 0.0)
    assert out[0, 0].item() == pytest.approx(-0.95 - math.sin(math.pi - 0.5) * 0.5, rel=1e-5)


def expected_iresnet_names(layers: list[int]) -> tuple[set[str], int]:
    """State-dict names and parameter count written from the architecture description."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"conv1.weight", "prelu.weight", *(f"bn1.{b}" for b in bn)}
    params = 3 * 64 * 9 + 2 * 64 + 64
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for i in range(blocks):
            p = f"layer{stage}.{i}"
            cin = inplanes if i == 0 else planes
            names |= {f"{p}.conv1.weight", f"{p}.conv2.weight", f"{p}.prelu.weight"}
            names |= {f"{p}.{b}.{x}" for b in ("bn1", "bn2", "bn3") for x in bn}
            params += 2 * cin + cin * planes * 9 + 2 * planes + planes + planes * planes * 9 + 2 * planes
            if i == 0:
                names |= {f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{x}" for x in bn)}
                params += cin * planes + 2 * planes
        inplanes = planes
    names |= {"fc.weight", "fc.bias", *(f"bn2.{b}" for b in bn), *(f"features.{b}" for b in bn)}
    params += 2 * 512 + 512 * 49 * 512 + 512 + 2 * 512
    return names, params


@pytest.mark.parametrize("name, known_count", [("r50", 43_590_848), ("r100", 65_156_160)])
def test_iresnet_matches_the_arcface_torch_layout(name, known_count):
    model = build_backbone(name)
    names, params = expected_iresnet_names(DEPTHS[name])
    assert set(model.state_dict()) == names
    assert sum(p.numel() for p in model.parameters()) == params == known_count
    assert not model.features.weight.requires_grad


def test_small_backbones_run_and_round_trip(tmp_path):
    for name in ("r18", "mbf"):
        model = build_backbone(name, num_features=32, width=0.25, input_size=56).eval()
        x = torch.randn(2, 3, 56, 56)
        torch.save(model.state_dict(), tmp_path / "m.pt")
        fresh = build_backbone(name, num_features=32, width=0.25, input_size=56).eval()
        fresh.load_state_dict(torch.load(tmp_path / "m.pt"), strict=True)
        torch.testing.assert_close(fresh(x), model(x))


def test_a_training_step_on_loader_crops_at_112_px_does_not_crash():
    """Loader crops are uint8 NHWC; a channels-last view of them segfaulted the CPU backward pass of
    a narrow r18 at 112 px. Run in a child process: a crash must fail this test, not end the run."""
    code = (
        "import torch\n"
        "from workbench.train.backbones import build_backbone, normalise_input\n"
        "torch.manual_seed(0)\n"
        "model = build_backbone('r18', 32, 0.125, 112)\n"
        "x = normalise_input(torch.randint(0, 256, (8, 112, 112, 3), dtype=torch.uint8))\n"
        "assert x.is_contiguous() and x.shape == (8, 3, 112, 112)\n"
        "model(x).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_entropic_open_set_loss_is_kl_uniform_plus_log_n():
    logits = torch.randn(5, 9, dtype=torch.float64) * 4
    torch.testing.assert_close(entropic(logits), uir_kl_uniform(logits) + math.log(9))


def test_objectosphere_magnitude_by_hand():
    # d = 4, xi = 2: known norms 1 and 3 pay (2-1)^2 and 0 (mean 0.5); the unknown norm 2 pays 4
    assert magnitude(torch.tensor([1.0, 3.0]), torch.tensor([2.0]), 4).item() == pytest.approx((0.5 + 4) / 4)
    assert magnitude(torch.tensor([2.0, 5.0]), torch.tensor([]), 4).item() == 0.0


def test_energy_hinges_by_hand():
    s = 10.0
    # known: E/s = -(2 + log 2)/10 is above ENERGY_IN = -0.5; unknown: E/s ~ -0.5 is below ENERGY_OUT = -0.2
    known, unknown = torch.tensor([[0.2, 0.2]]) * s, torch.tensor([[0.5, -1.0]]) * s
    e_known = -(2 + math.log(2)) / 10
    e_unknown = -(5 + math.log1p(math.exp(-15))) / 10
    expected = (e_known - ENERGY_IN) ** 2 + (ENERGY_OUT - e_unknown) ** 2
    assert energy_hinges(known, unknown, s).item() == pytest.approx(expected, rel=1e-5)
    # rows already on the right side of their margins pay nothing
    assert energy_hinges(torch.tensor([[1.0, 0.0]]) * s, torch.tensor([[0.0, 0.0]]) * s, s).item() == 0.0


def test_objectosphere_in_a_batch_is_entropic_on_unknown_rows_plus_magnitude():
    torch.manual_seed(0)
    features = torch.randn(6, 4, dtype=torch.float64) * 3
    head = MarginHead(4, 5).double()
    cos = head.cosine(features).double()
    got = open_set_loss("objectosphere", cos, 4, 8.0, features)
    norms = features.norm(dim=1)
    expected = entropic(8.0 * cos[4:]).mean() + magnitude(norms[:4], norms[4:], 4)
    assert got.item() == pytest.approx(expected.item())
    assert open_set_loss("kl-uniform", cos, 4, 8.0).item() == pytest.approx(
        uir_kl_uniform(8.0 * cos[4:]).mean().item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["objectosphere", "energy"])
def test_open_set_losses_have_finite_gradients(kind):
    features = (torch.randn(6, 8, dtype=torch.float64) * 2).requires_grad_()
    weight = torch.randn(5, 8, dtype=torch.float64)

    def loss(f: torch.Tensor) -> torch.Tensor:
        cos = torch.nn.functional.normalize(f) @ torch.nn.functional.normalize(weight).T
        return open_set_loss(kind, cos, 3, 4.0, f)

    assert torch.autograd.gradcheck(loss, (features,))
