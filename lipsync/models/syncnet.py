"""SyncNet: does this lower face move with this audio? (the Wav2Lip sync-expert idea)

A face tower embeds the lower half of the model crop, an audio tower (the AudioEncoder) embeds the
(1, 80, 16) mel window of the same video frame. Both embeddings are ReLU'd and L2-normalised, so
their dot product (the cosine similarity) lies in [0, 1] and is read as P(in sync). Trained with
BCE on in-sync pairs (label 1) and pairs whose audio is shifted in time (label 0); then frozen and
used as the generator's sync loss and as an evaluation score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lipsync.models.audio_encoder import EMBED_DIM, AudioEncoder, ConvBlock, ConvSpec


@dataclass(frozen=True)
class SyncNetConfig:
    """Architecture of the SyncNet; saved beside its weights."""

    face_size: tuple[int, int] = (96, 192)  # (H, W) the lower face is resized to
    # One stride-2 stage per width after a stride-1 7x7 stem of widths[0].
    face_widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    residual_blocks: int = 1  # residual 3x3 blocks per face stage
    embed_dim: int = EMBED_DIM  # must equal the AudioEncoder's output width

    def __post_init__(self) -> None:
        if self.embed_dim != EMBED_DIM:
            raise ValueError(f"SyncNetConfig.embed_dim must be {EMBED_DIM} (the AudioEncoder's width)")
        if not self.face_widths or len(self.face_size) != 2 or min(self.face_size) < 2 ** len(self.face_widths):
            raise ValueError(f"SyncNetConfig: face_size {self.face_size} too small for {len(self.face_widths)} stages")


class FaceEncoder(nn.Module):
    """(N, 3, H, W) lower face -> (N, D): conv stages, a 1x1 projection to D, global average pooling."""

    def __init__(self, config: SyncNetConfig):
        super().__init__()
        w = config.face_widths
        layers = [ConvBlock(ConvSpec(3, w[0], 7, 1, 3))]
        cin = w[0]
        for cout in w:
            layers.append(ConvBlock(ConvSpec(cin, cout, 3, 2, 1)))
            layers += [ConvBlock(ConvSpec(cout, cout, 3, 1, 1, residual=True)) for _ in range(config.residual_blocks)]
            cin = cout
        layers.append(ConvBlock(ConvSpec(cin, config.embed_dim, 1, 1, 0)))
        self.face_encoder = nn.Sequential(*layers)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.face_encoder(face)  # (N, D, H / 2^k, W / 2^k)
        return x.mean(dim=(2, 3))  # (N, D)


class SyncNet(nn.Module):
    """forward(face (N, 3, h, w) in [0, 1], mel (N, 1, 80, 16)) -> (face_emb (N, D), audio_emb (N, D))."""

    def __init__(self, config: SyncNetConfig):
        super().__init__()
        self.config = config
        self.face_encoder = FaceEncoder(config)
        self.audio_encoder = AudioEncoder()

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(face.shape[-2:]) != tuple(self.config.face_size):
            raise ValueError(f"SyncNet face must be (N, 3, {self.config.face_size[0]}, {self.config.face_size[1]}), "
                             f"got {tuple(face.shape)}; use lower_face() to resize")
        face_emb = F.normalize(F.relu(self.face_encoder(face)), dim=1)  # (N, D), unit length, >= 0
        audio_emb = F.normalize(F.relu(self.audio_encoder(mel)), dim=1)  # (N, D), unit length, >= 0
        return face_emb, audio_emb


def lower_face(crop: torch.Tensor, face_size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, S, S) model crop -> (N, 3, h, w): its lower half, resized for the face tower.

    Differentiable (the generator's sync loss flows through it). Antialiased when shrinking, so a
    half-resolution face tower still sees the mouth rather than aliasing noise.
    """
    s = crop.shape[-2]
    half = crop[:, :, s // 2 :, :]  # (N, 3, S - S//2, S)
    if tuple(half.shape[-2:]) == tuple(face_size):
        return half
    shrinking = half.shape[-2] > face_size[0] or half.shape[-1] > face_size[1]
    return F.interpolate(half, size=tuple(face_size), mode="bilinear", align_corners=False, antialias=shrinking)


def sync_similarity(face_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) unit, non-negative embeddings -> (N,) cosine similarity in [0, 1]."""
    return (face_emb * audio_emb).sum(dim=1).clamp(0.0, 1.0)


def sync_bce_loss(sim: torch.Tensor, label: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean binary cross-entropy of similarities (N,) against labels (N,) or (N, 1) in {0, 1}.

    Computed by hand in float32 with the similarity clamped to [eps, 1 - eps]: log(0) cannot occur,
    and it stays valid under autocast (where F.binary_cross_entropy refuses to run).
    """
    p = sim.float().reshape(-1).clamp(eps, 1.0 - eps)
    y = label.float().reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"sync_bce_loss: {p.numel()} similarities but {y.numel()} labels")
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p)).mean()
