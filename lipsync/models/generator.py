"""Generator: the SyncTalk_2D UNet shape, as one configurable module.

A MobileNetV2-style UNet: every stage is a pair of inverted-residual blocks (1x1 expand, 3x3
depthwise, 1x1 project). The encoder downsamples 5 times (320 -> 10 for st2d-328); the audio
features are reduced to the bottleneck's spatial size, concatenated with it and fused; the decoder
upsamples bilinearly, concatenates the skip of the same size, and ends in a 1x1 conv and a sigmoid.

Input: (N, 6, S, S) = reference crop ++ masked crop, values in [0, 1]; audio: (N, A, ah, aw)
(`ave`: 32x16x16). Output: (N, 3, S, S) in [0, 1], the regenerated crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (channels, height, width) of the audio features each backend hands the generator per frame.
AUDIO_FEATURE_SHAPES: dict[str, tuple[int, int, int]] = {
    "ave": (32, 16, 16),  # 16 frames x 512 AudioEncoder values, reshaped
    "hubert": (32, 32, 32),
    "wenet": (256, 16, 32),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator; saved beside its weights so a checkpoint rebuilds it."""

    size: int = 320  # S: the model sees and paints an S x S crop
    # Encoder widths: the input block gives widths[0]; the 5 downsamplings give
    # widths[0], widths[1], ..., widths[4]; the decoder mirrors them.
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    expand_ratio: int = 2  # hidden width of an inverted-residual block = input width * this
    in_channels: int = 6  # reference crop (3) ++ masked crop (3)
    out_channels: int = 3
    audio_channels: int = 32
    audio_hw: tuple[int, int] = (16, 16)

    def __post_init__(self) -> None:
        if len(self.widths) != 5:
            raise ValueError(f"GeneratorConfig.widths needs 5 values (one per downsampling), got {self.widths}")
        if min(self.widths) < 2 or self.expand_ratio < 1:
            raise ValueError(f"GeneratorConfig: widths >= 2 and expand_ratio >= 1 required, got {self}")
        if self.size < 2 ** len(self.widths):
            raise ValueError(f"GeneratorConfig.size {self.size} is smaller than 2**{len(self.widths)}")

    @property
    def head_channels(self) -> int:
        """Width of the last decoder stage, before the 1x1 output conv."""
        return max(self.widths[0] // 2, 1)

    @property
    def bottleneck_size(self) -> int:
        """Spatial side after the 5 stride-2 convs (k3, p1 maps s to ceil(s / 2))."""
        s = self.size
        for _ in self.widths:
            s = -(-s // 2)
        return s

    @property
    def audio_shape(self) -> tuple[int, int, int]:
        return (self.audio_channels, *self.audio_hw)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (carries the stride) -> 1x1 project; identity shortcut when the
    shape is unchanged (MobileNetV2)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand_ratio: int = 2):
        super().__init__()
        hidden = cin * expand_ratio
        self.use_shortcut = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


class DoubleInvertedResidual(nn.Sequential):
    """Two inverted-residual blocks: the first changes width (and maybe size), the second refines."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__(
            InvertedResidual(cin, cout, stride, expand_ratio),
            InvertedResidual(cout, cout, 1, expand_ratio),
        )


class Up(nn.Module):
    """Bilinear upsampling to the skip's size, concat with the skip, two inverted-residual blocks."""

    def __init__(self, cin: int, cout: int, expand_ratio: int):
        super().__init__()
        self.conv = DoubleInvertedResidual(cin, cout, 1, expand_ratio)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv(torch.cat([x, skip], dim=1))  # (N, C_x + C_skip, h, w) -> (N, cout, h, w)


def _axis_steps(side: int, target: int) -> list[tuple[int, int]]:
    """(stride, padding) of the 3x3 convs that take one audio axis from `side` down to `target`.

    Halve (stride 2, padding 1) while the result stays >= target; if the side is still above
    target, one more stride-2 conv with just enough padding lands on it exactly (for ave at
    S=320: 16 -> 10 with padding 3, the SyncTalk_2D audio branch).
    """
    steps = []
    while -(-side // 2) >= target:
        side = -(-side // 2)
        steps.append((2, 1))
    if side > target:
        pad = 1
        while (side + 2 * pad - 3) // 2 + 1 < target:
            pad += 1
        steps.append((2, pad))
    return steps


def audio_reduction_plan(audio_hw: tuple[int, int], target: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Per reduction conv: ((stride_h, stride_w), (pad_h, pad_w)), mapping audio_hw to target x target.

    At least two reduction convs are built (as in SyncTalk_2D); an axis's steps are taken by the
    last convs, the earlier ones keep its size (stride 1, padding 1).
    """
    per_axis = [_axis_steps(side, target) for side in audio_hw]
    n_convs = max(2, *(len(steps) for steps in per_axis))
    padded = [[(1, 1)] * (n_convs - len(steps)) + steps for steps in per_axis]
    return [((h[0], w[0]), (h[1], w[1])) for h, w in zip(*padded)]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: tuple[int, int], padding: tuple[int, int]):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, padding, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class AudioBranch(nn.Module):
    """(N, A, ah, aw) audio features -> (N, widths[4], b, b) at the generator's bottleneck size b.

    Strided convs do the reduction (see audio_reduction_plan); features smaller than b (a
    backend with fewer frames than the bottleneck is wide) are interpolated up at the end.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        w, e = config.widths, config.expand_ratio
        self.target = config.bottleneck_size
        self.stem = nn.Sequential(
            InvertedResidual(config.audio_channels, w[1], 1, e),
            InvertedResidual(w[1], w[2], 1, e),
        )
        reduce: list[nn.Module] = []
        cin = w[2]
        for i, (stride, padding) in enumerate(audio_reduction_plan(config.audio_hw, self.target)):
            cout = w[3] if i == 0 else w[4]
            reduce += [ConvBNReLU(cin, cout, stride, padding), InvertedResidual(cout, cout, 1, e)]
            cin = cout
        self.reduce = nn.Sequential(*reduce)
        self.tail = InvertedResidual(w[4], w[4], 1, e)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.tail(self.reduce(self.stem(audio)))  # (N, w4, b, b) unless ah or aw < b
        return self._resize_to_bottleneck(x)  # (N, w4, b, b)

    def _resize_to_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        b = self.target
        if (h, w) == (b, b):
            return x
        if h >= b and w >= b:
            return F.adaptive_avg_pool2d(x, b)
        return F.interpolate(x, size=(b, b), mode="bilinear", align_corners=False)


class Generator(nn.Module):
    """The lip-sync UNet; see the module docstring for inputs and outputs."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        w, e = config.widths, config.expand_ratio
        self.inc = InvertedResidual(config.in_channels, w[0], 1, e)
        # Encoder outputs (skips, shallow to deep): w0 @ S, w0 @ S/2, w1 @ S/4, ..., w4 @ S/32.
        enc_widths = (w[0], w[0], *w[1:])
        self.downs = nn.ModuleList(
            DoubleInvertedResidual(cin, cout, 2, e) for cin, cout in zip(enc_widths[:-1], enc_widths[1:])
        )
        self.audio = AudioBranch(config)
        skips = enc_widths[-2::-1]  # deep to shallow: w3, w2, w1, w0, w0
        self.fuse = nn.Sequential(
            DoubleInvertedResidual(2 * w[4], w[4], 1, e),
            DoubleInvertedResidual(w[4], skips[0], 1, e),
        )
        # Each Up turns (x ++ skip) into the width of the next skip, so x ++ skip is always 2x that.
        up_out = (*skips[1:], config.head_channels)
        self.ups = nn.ModuleList(Up(s + s, o, e) for s, o in zip(skips, up_out))
        self.outc = nn.Conv2d(config.head_channels, config.out_channels, 1)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        self._check_inputs(x, audio)
        feats = [self.inc(x)]  # (N, w0, S, S)
        for down in self.downs:
            feats.append(down(feats[-1]))  # ..., (N, w4, S/32, S/32)
        a = self.audio(audio)  # (N, w4, S/32, S/32)
        y = self.fuse(torch.cat([feats.pop(), a], dim=1))  # (N, 2*w4, b, b) -> (N, w3, b, b)
        for up in self.ups:
            y = up(y, feats.pop())
        return torch.sigmoid(self.outc(y))  # (N, 3, S, S) in [0, 1]

    def _check_inputs(self, x: torch.Tensor, audio: torch.Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[-2:] != (c.size, c.size):
            raise ValueError(
                f"generator input must be (N, {c.in_channels}, {c.size}, {c.size}), got {tuple(x.shape)}"
            )
        if audio.dim() != 4 or tuple(audio.shape[1:]) != c.audio_shape or audio.shape[0] != x.shape[0]:
            raise ValueError(
                f"generator audio must be (N, *{c.audio_shape}) with N={x.shape[0]}, got {tuple(audio.shape)}"
            )
