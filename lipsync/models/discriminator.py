"""A light patch discriminator for the mouth region (issue 16: a mouth that opens as far as the person's).

A generator trained on L1/SSIM alone regresses towards the average mouth when the audio leaves the
shape uncertain: a half-open, soft mouth scores better than a confident wrong one. An adversary that
tells real mouth crops from generated ones penalises that average. It only sees the mouth region
(LossWeights.mouth_region of the model crop) and is used only in training (TrainConfig: loss.adversarial);
bundles never hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class DiscriminatorConfig:
    channels: int = 32  # of the first conv; doubled per downsampling layer
    layers: int = 3  # stride-2 convs: one logit per patch of about 2**layers pixels of the mouth crop


class PatchDiscriminator(nn.Module):
    """Real-vs-generated logits per patch.

    (N, 3, h, w) in [0, 1] -> (N, 1, h', w') logits (> 0: real), h and w halved `layers` times (rounding down).
    Spectral norm on every conv keeps the adversary's gradients bounded on a few minutes of footage.
    """

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = config
        blocks: list[nn.Module] = []
        c_in = 3
        for i in range(config.layers):
            c_out = config.channels * 2 ** i
            blocks += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c_in = c_out
        blocks.append(spectral_norm(nn.Conv2d(c_in, 1, 3, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, mouth: torch.Tensor) -> torch.Tensor:
        return self.net(mouth * 2.0 - 1.0)  # [0, 1] -> [-1, 1]
