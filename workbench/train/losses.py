"""Unknown Identity Rejection losses for unlabeled rows (Yu et al., ICCV-W 2019).

For an unlabeled face, z = s * cos(theta) against all n class centres (no
margin) and p = softmax(z).

- `reference`: what the authors released for their experiments:
  -sum_i log softmax(p)_i - n log n = n * KL(uniform || softmax(p)).
  The softmax is applied to p itself, so the loss is bounded in [0, e - 2] and
  acts as a penalty on large p_i. Written naively it subtracts two numbers near
  n log n and loses all precision at 100k classes; here it is
  n * log1p(sum_i expm1(p_i) / n) - 1, which is exact in fp32.
- `kl-uniform`: the paper's stated intent, every p_i pushed to 1/n:
  KL(uniform || p) = logsumexp(z) - mean(z) - log n, from the logits.
- `none`: the baseline; unlabeled rows contribute nothing.
"""

from __future__ import annotations

import math

import torch

UIR_LOSSES = ("reference", "kl-uniform", "none")


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


def uir_reference(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample n * KL(uniform || softmax(softmax(z))), stable in fp32."""
    z = _at_least_fp32(logits)
    n = z.shape[1]
    p = torch.softmax(z, dim=1)
    return n * torch.log1p(torch.expm1(p).sum(dim=1) / n) - 1.0


def uir_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(uniform || softmax(z)) from logits, finite at any n."""
    z = _at_least_fp32(logits)
    return torch.logsumexp(z, dim=1) - z.mean(dim=1) - math.log(z.shape[1])


def uir_loss(kind: str, cos: torch.Tensor, s: float) -> torch.Tensor:
    """Mean UIR loss of unlabeled rows given their cosines to all centres."""
    if kind == "none" or cos.shape[0] == 0:
        return cos.new_zeros((), dtype=torch.float32)
    logits = s * cos.float()
    if kind == "reference":
        return uir_reference(logits).mean()
    if kind == "kl-uniform":
        return uir_kl_uniform(logits).mean()
    raise ValueError(f"unknown UIR loss {kind!r}; choose one of {', '.join(UIR_LOSSES)}")
