"""ResNet-50 truncated after its third stage (CLAM's and TRIDENT's `resnet50` patch encoder).

ImageNet ResNet-50 up to `layer3`, then global average pooling: 1024 features per 224 px
patch. Parameter names follow torchvision's (and timm's) `resnet50`, so their checkpoints
load directly; the dropped `layer4.*` and `fc.*` tensors are ignored.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from threads_search.encoders.patch.local_weights import (
    build_from_torchscript,
    is_torchscript_file,
    load_matching_state_dict,
    load_state_dict_file,
)
from threads_search.encoders.patch.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PatchEncoderSpec,
    register_patch_encoder,
)

STAGE_BLOCKS = (3, 4, 6)  # layer1..layer3 of ResNet-50
STAGE_WIDTHS = (64, 128, 256)
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, as torchvision's v1.5) -> 1x1 with a residual connection."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Trunc(nn.Module):
    """(b, 3, h, w) ImageNet-normalised -> (b, 1024) pooled `layer3` features."""

    output_dim = STAGE_WIDTHS[-1] * EXPANSION

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTHS)):
            stride = 1 if index == 0 else 2
            stage = [Bottleneck(in_channels, width, stride)]
            in_channels = width * EXPANSION
            stage += [Bottleneck(in_channels, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)


@register_patch_encoder(
    "resnet50_trunc",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    output_dim=ResNet50Trunc.output_dim,
    description="ImageNet ResNet-50 cut after layer3, 1024-d (CLAM/TRIDENT 'resnet50'); torchvision/timm weights file",
    needs_weights=True,
)
def build_resnet50_trunc(spec: PatchEncoderSpec, weights: Path) -> tuple[PatchEncoderSpec, nn.Module]:
    if is_torchscript_file(weights):
        return build_from_torchscript(spec, weights)
    module = ResNet50Trunc()
    load_matching_state_dict(
        module, load_state_dict_file(weights), weights, spec.name, ignored_prefixes=("layer4.", "fc.")
    )
    return spec, module
