"""Open-set losses on unlabeled rows: Unknown Identity Rejection (Yu et al., ICCV-W 2019) and the
losses it competes with.

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
- `objectosphere` (Dhamija et al., NeurIPS 2018): the entropic open-set loss on
  unlabeled rows (-mean_i log p_i, which is `kl-uniform` + log n: the same
  gradient, so it needs no arm of its own) plus the feature-magnitude term:
  known features kept at norm >= xi, unknown features pulled to norm 0, as
  relu(xi - |f|)^2 and |f|^2. Here xi = sqrt(d), the norm of a standardised
  d-dim feature, and the magnitude term is divided by d, so it is about 1 at
  the start whatever the width (the paper's lambda and xi are per network).
- `energy` (Liu et al., NeurIPS 2020): squared hinges on the free energy
  E = -logsumexp(z) (T = 1): relu(E_known - m_in)^2 + relu(m_out - E_unknown)^2.
  With z = s * cos the energies scale with s, so they are taken per unit of s
  (E / s, about minus the best cosine) and the margins are in cosine units:
  `ENERGY_IN` for known rows, `ENERGY_OUT` for unknown ones.
- `none`: the baseline; unlabeled rows contribute nothing.

The authors' released UIR differs from the paper's formula (the softmax applied
twice, `reference`); Objectosphere and energy act on the features' norm and on
the logits' scale, which UIR (on normalised cosines) leaves alone.
"""

from __future__ import annotations

import math

import torch

UIR_LOSSES = ("reference", "kl-uniform", "none")
OPEN_SET_LOSSES = ("objectosphere", "energy")
LOSSES = UIR_LOSSES + OPEN_SET_LOSSES
ENERGY_IN, ENERGY_OUT = -0.5, -0.2  # margins on E / s: known rows below, unknown rows above


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


def entropic(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropic open-set loss -mean_i log softmax(z)_i (= KL(uniform || p) + log n)."""
    z = _at_least_fp32(logits)
    return torch.logsumexp(z, dim=1) - z.mean(dim=1)


def magnitude(norms_known: torch.Tensor, norms_unknown: torch.Tensor, dim: int) -> torch.Tensor:
    """Objectosphere's feature-magnitude term, per unit of width: known norms up to sqrt(d),
    unknown norms down to 0 (means over each group; 0 for an empty group)."""
    xi = math.sqrt(dim)
    known = (torch.relu(xi - _at_least_fp32(norms_known)) ** 2).mean() if len(norms_known) else 0.0
    unknown = (_at_least_fp32(norms_unknown) ** 2).mean() if len(norms_unknown) else 0.0
    return (known + unknown) / dim


def energy_hinges(logits_known: torch.Tensor, logits_unknown: torch.Tensor, s: float) -> torch.Tensor:
    """Energy-bounded loss on E / s (E = -logsumexp(z)): known rows above `ENERGY_IN` and unknown
    rows below `ENERGY_OUT` pay the squared distance (means over each group)."""
    def e(z: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(_at_least_fp32(z), dim=1) / s

    known = (torch.relu(e(logits_known) - ENERGY_IN) ** 2).mean() if len(logits_known) else 0.0
    unknown = (torch.relu(ENERGY_OUT - e(logits_unknown)) ** 2).mean() if len(logits_unknown) else 0.0
    return known + unknown


def open_set_loss(kind: str, cos: torch.Tensor, n_known: int, s: float,
                  features: torch.Tensor | None = None) -> torch.Tensor:
    """The open-set term of a batch: `cos` holds every row's cosines to all centres (the
    `n_known` labeled rows first), `features` the rows' features before normalisation
    (Objectosphere only)."""
    zero = cos.new_zeros((), dtype=torch.float32)
    if kind in UIR_LOSSES:
        return uir_loss(kind, cos[n_known:], s)
    if kind == "objectosphere":
        if features is None:
            raise ValueError("objectosphere needs the features")
        unknown = cos[n_known:]
        norms = _at_least_fp32(features).norm(dim=1)
        term = entropic(s * _at_least_fp32(unknown)).mean() if len(unknown) else zero
        return term + magnitude(norms[:n_known], norms[n_known:], features.shape[1])
    if kind == "energy":
        return zero + energy_hinges(s * _at_least_fp32(cos[:n_known]), s * _at_least_fp32(cos[n_known:]), s)
    raise ValueError(f"unknown open-set loss {kind!r}; choose one of {', '.join(LOSSES)}")


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
