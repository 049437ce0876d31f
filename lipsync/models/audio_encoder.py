"""AudioEncoder: the Wav2Lip sync-expert audio tower, one (1, 80, 16) mel window -> 512 values.

The layer plan is fixed on purpose: it is the layout of SyncTalk_2D's `audio_visual_encoder.pth`,
so a user-supplied file of that kind loads into this module (see `pretrained.load_audio_encoder`).
Parameter names follow that file: `audio_encoder.<i>.conv_block.0` is the conv (with bias),
`audio_encoder.<i>.conv_block.1` its BatchNorm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

MEL_BINS = 80  # mel bands of one window (AudioConfig.n_mels)
MEL_STEPS = 16  # mel frames of one window (AudioConfig.mel_window)
EMBED_DIM = 512  # output values per window (AudioConfig.feature_dim)


class ConvSpec(NamedTuple):
    cin: int
    cout: int
    kernel: int
    stride: int | tuple[int, int]
    padding: int
    residual: bool = False


# Mel window (1, 80, 16) -> (32, 80, 16) -> (64, 27, 16) -> (128, 9, 6) -> (256, 3, 3) -> (512, 1, 1).
AUDIO_ENCODER_PLAN: tuple[ConvSpec, ...] = (
    ConvSpec(1, 32, 3, 1, 1),
    ConvSpec(32, 32, 3, 1, 1, residual=True),
    ConvSpec(32, 32, 3, 1, 1, residual=True),
    ConvSpec(32, 64, 3, (3, 1), 1),
    ConvSpec(64, 64, 3, 1, 1, residual=True),
    ConvSpec(64, 64, 3, 1, 1, residual=True),
    ConvSpec(64, 128, 3, 3, 1),
    ConvSpec(128, 128, 3, 1, 1, residual=True),
    ConvSpec(128, 128, 3, 1, 1, residual=True),
    ConvSpec(128, 256, 3, (3, 2), 1),
    ConvSpec(256, 256, 3, 1, 1, residual=True),
    ConvSpec(256, 512, 3, 1, 0),
    ConvSpec(512, 512, 1, 1, 0),
)


class ConvBlock(nn.Module):
    """Conv2d (with bias) + BatchNorm2d, an optional identity shortcut, then ReLU."""

    def __init__(self, spec: ConvSpec):
        super().__init__()
        if spec.residual and spec.cin != spec.cout:
            raise ValueError(f"a residual ConvBlock needs cin == cout, got {spec.cin} -> {spec.cout}")
        self.conv_block = nn.Sequential(
            nn.Conv2d(spec.cin, spec.cout, spec.kernel, spec.stride, spec.padding),
            nn.BatchNorm2d(spec.cout),
        )
        self.act = nn.ReLU()
        self.residual = spec.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class AudioEncoder(nn.Module):
    """(N, 1, 80, 16) mel windows -> (N, 512) features (non-negative: the last block ends in ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_encoder = nn.Sequential(*(ConvBlock(spec) for spec in AUDIO_ENCODER_PLAN))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        out = self.audio_encoder(mel)  # (N, 512, 1, 1)
        return out.flatten(1)  # (N, 512)
