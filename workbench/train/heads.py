"""Margin softmax heads on normalised class centres; logits always in fp32.

Combined margin (InsightFace): target logit s * (cos(m1 * theta + m2) - m3).
ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.4). The class-centre weight W is what
the UIR loss and the sparsity metrics read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEADS = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.4)}


def margin_logits(cos: torch.Tensor, labels: torch.Tensor, s: float, m1: float, m2: float,
                  m3: float) -> torch.Tensor:
    """Apply the combined margin to the target column of a cosine matrix; pure and fp32."""
    cos = cos.float().clamp(-1.0, 1.0)
    target = cos.gather(1, labels[:, None])
    if m1 == 1.0 and m2 == 0.0:
        adjusted = target - m3
    else:
        theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        adjusted = torch.cos(m1 * theta + m2) - m3
        # Past theta = pi - m2 the margin would make cos increase again: fall back (InsightFace).
        limit = math.cos(math.pi - m2) if m2 > 0 else -1.0
        adjusted = torch.where(target > limit, adjusted, target - math.sin(math.pi - m2) * m2)
    return s * cos.scatter(1, labels[:, None], adjusted)


class MarginHead(nn.Module):
    def __init__(self, num_features: int, num_classes: int, kind: str = "arcface", s: float = 64.0,
                 margins: tuple[float, float, float] | None = None):
        super().__init__()
        if margins is None:
            if kind not in HEADS:
                raise ValueError(f"unknown head {kind!r}; choose {', '.join(HEADS)} or give margins")
            margins = HEADS[kind]
        self.s, (self.m1, self.m2, self.m3) = s, margins
        self.weight = nn.Parameter(torch.empty(num_classes, num_features))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) between embeddings and every class centre, in fp32."""
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def loss(self, cos: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the margin, from cosines already computed (one normalisation of W
        a step serves the labeled and the unlabeled rows)."""
        return F.cross_entropy(margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3), labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with the margin on labeled rows."""
        return self.loss(self.cosine(embeddings), labels)
