"""Face recognition backbones with InsightFace arcface_torch's layer layout and state_dict names.

IResNet: stem conv1/bn1/prelu; layer1-4 of IBasicBlock (bn1-conv1-bn2-prelu-conv2-bn3),
stride 2 in each stage with a downsample (1x1 conv + BN) in each layerN.0; head bn2,
dropout, fc (512*7*7 -> 512) and a BatchNorm1d `features` with a frozen unit weight.
A user's arcface_torch `model.pt` loads with strict=True, and ours loads there.
`width` scales the channels and `input_size` the spatial size, for small CPU tests.
Input: RGB, (x / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {"r18": [2, 2, 2, 2], "r34": [3, 4, 6, 3], "r50": [3, 4, 14, 3], "r100": [3, 13, 30, 3]}
BN_EPS = 1e-5


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


def _spatial(size: int, stages: int = 4) -> int:
    for _ in range(stages):
        size = (size - 1) // 2 + 1
    return size


class IResNet(nn.Module):
    def __init__(self, layers: list[int], num_features: int = 512, width: float = 1.0,
                 input_size: int = 112, dropout: float = 0.0):
        super().__init__()
        widths = [max(8, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = _spatial(input_size)
        self.fc = nn.Linear(widths[3] * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=BN_EPS),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        with torch.autocast(x.device.type, enabled=False):  # the embedding layer in fp32 (arcface_torch)
            x = self.fc(self.dropout(x).float())
        return self.features(x)


class DepthWise(nn.Module):
    """MobileFaceNet bottleneck: 1x1 expand, 3x3 depthwise, 1x1 project (residual when shapes match)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, residual: bool):
        super().__init__()
        mid = cin * expansion
        self.residual = residual
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet (Chen et al., 2018): ~1M parameters, global depthwise conv head."""

    def __init__(self, num_features: int = 512, width: float = 1.0, input_size: int = 112):
        super().__init__()
        c = max(8, round(64 * width))
        c2 = max(8, round(128 * width))
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c), nn.PReLU(c),
        )
        stages = []
        for cin, cout, stride, n, expansion in ((c, c, 2, 5, 2), (c, c2, 2, 1, 4), (c2, c2, 1, 6, 2),
                                                (c2, c2, 2, 1, 4), (c2, c2, 1, 2, 2)):
            for i in range(n):
                first = i == 0
                stages.append(DepthWise(cin if first else cout, cout, stride if first else 1, expansion,
                                        residual=not first or (cin == cout and stride == 1)))
        self.stages = nn.Sequential(*stages)
        wide = 4 * c2
        side = _spatial(input_size, 4)
        self.head = nn.Sequential(
            nn.Conv2d(c2, wide, 1, bias=False), nn.BatchNorm2d(wide), nn.PReLU(wide),
            nn.Conv2d(wide, wide, side, groups=wide, bias=False), nn.BatchNorm2d(wide),
            nn.Flatten(), nn.Linear(wide, num_features, bias=False), nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x))).float()


def build_backbone(name: str, num_features: int = 512, width: float = 1.0,
                   input_size: int = 112) -> nn.Module:
    if name in DEPTHS:
        return IResNet(DEPTHS[name], num_features, width, input_size)
    if name == "mbf":
        return MobileFaceNet(num_features, width, input_size)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join([*DEPTHS, 'mbf'])}")


def normalise_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC RGB -> float NCHW in [-1, 1], as arcface_torch trains. Contiguous: the permuted
    (channels-last) view crashed the CPU backward pass of narrow convolutions (torch 2.13)."""
    return ((images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5).contiguous()
