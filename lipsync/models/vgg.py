"""VGG19 feature layers, for the optional perceptual loss (torchvision is not a dependency).

`VGG19Features.features` has the same layer indices as torchvision's `vgg19().features`, so a
torchvision VGG19 state dict (keys `features.<i>.weight` / `.bias`; the classifier part is not
needed) loads into it. The module takes (N, 3, H, W) images in [0, 1] in RGB order, normalises
them with the ImageNet statistics and returns the activations after the chosen ReLUs.
"""

from __future__ import annotations

import torch
from torch import nn

# Channels of each 3x3 conv; "M" is a 2x2 max-pool (VGG19 = configuration "E").
VGG19_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices into `features` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (the usual perceptual taps).
DEFAULT_TAPS: tuple[int, ...] = (1, 6, 11, 20, 29)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_layers(plan: tuple[int | str, ...] = VGG19_PLAN) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = 3
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(item)
    return layers


class VGG19Features(nn.Module):
    """(N, 3, H, W) RGB in [0, 1] -> list of activations at `taps` (shallow to deep)."""

    def __init__(self, taps: tuple[int, ...] = DEFAULT_TAPS):
        super().__init__()
        self.taps = tuple(sorted(taps))
        self.features = nn.Sequential(*vgg19_layers()[: self.taps[-1] + 1])  # nothing past the last tap
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = (rgb - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out
