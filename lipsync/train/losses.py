"""Losses of both stages. SSIM comes from torchmetrics (differentiable), never hand-written."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from lipsync.errors import InputError
from lipsync.models.pretrained import read_state_dict
from lipsync.models.syncnet import SyncNet, lower_face, sync_bce_loss, sync_similarity
from lipsync.models.vgg import VGG19Features


def syncnet_loss(syncnet: nn.Module, face: torch.Tensor, mel: torch.Tensor, label: torch.Tensor,
                 face_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: BCE of SyncNet's in-sync probability against labels (1 aligned, 0 not).

    face: (N, 3, S, S) in [0, 1]; mel: (N, 1, 80, 16); label: (N,). Returns (loss, similarity (N,)).
    `syncnet` may be DDP-wrapped, so its config comes in as `face_size`.
    """
    face_emb, audio_emb = syncnet(lower_face(face, face_size), mel)  # (N, D), (N, D)
    sim = sync_similarity(face_emb, audio_emb)  # (N,)
    return sync_bce_loss(sim, label), sim


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM over the batch; both (N, 3, H, W) in [0, 1], computed in float32."""
    ssim = structural_similarity_index_measure(pred.float(), target.float(), data_range=1.0)
    return 1.0 - ssim


def sync_loss(syncnet: SyncNet, generated: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """Stage 2: the frozen SyncNet's BCE for "in sync" on the generated lower face vs its mel window."""
    face_emb, audio_emb = syncnet(lower_face(generated, syncnet.config.face_size), mel)
    sim = sync_similarity(face_emb, audio_emb)
    return sync_bce_loss(sim, torch.ones_like(sim))


def balanced_accuracy(sim: torch.Tensor, label: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean of the accuracy on positives and on negatives (independent of how many of each)."""
    pred = sim > threshold
    pos, neg = label > 0.5, label <= 0.5
    parts = [(pred[pos]).float().mean().item() if pos.any() else None,
             (~pred[neg]).float().mean().item() if neg.any() else None]
    parts = [p for p in parts if p is not None]
    return float(sum(parts) / len(parts)) if parts else float("nan")


def mouth_crop(images: torch.Tensor, region: tuple[float, float, float, float]) -> torch.Tensor:
    """The mouth region of (N, C, S, S) crops (fractions of S: x0, y0, x1, y1) -> (N, C, h, w)."""
    s = images.shape[-1]
    x0, y0, x1, y1 = (round(f * s) for f in region)
    return images[..., y0:y1, x0:x1]


def mouth_l1(pred: torch.Tensor, target: torch.Tensor, region: tuple[float, float, float, float]) -> torch.Tensor:
    """L1 over the mouth region of (N, 3, S, S) crops (fractions of S: x0, y0, x1, y1)."""
    return F.l1_loss(mouth_crop(pred, region).float(), mouth_crop(target, region).float())


class MouthAdversary:
    """The adversarial term of issue 16: a patch discriminator on the mouth region of the crops.

    Non-saturating GAN losses (softplus form of the logistic loss). The generator's term goes
    through the discriminator with its parameters frozen, so only the generator gets gradients;
    the discriminator's step sees real and generated mouths in one forward pass (one DDP
    reduction per step when `model` is wrapped).
    """

    def __init__(self, discriminator: nn.Module, model: nn.Module, region: tuple[float, float, float, float]):
        self.discriminator = discriminator  # the bare module
        self.model = model  # the same, moved to the device and wrapped for data-parallel training
        self.region = region

    def generator_term(self, pred: torch.Tensor) -> torch.Tensor:
        """-log D(generated mouth), averaged over patches; pred (N, 3, S, S) in [0, 1]."""
        self.discriminator.requires_grad_(False)
        try:
            logits = self.discriminator(mouth_crop(pred, self.region).float())
        finally:
            self.discriminator.requires_grad_(True)
        return F.softplus(-logits).mean()

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-log D(real) - log(1 - D(fake)) over patches, and the share of patches it classifies right.

        real, fake: (N, 3, S, S) in [0, 1]; `fake` is detached from the generator."""
        mouths = torch.cat([mouth_crop(real, self.region), mouth_crop(fake.detach(), self.region)]).float()
        logits = self.model(mouths)  # (2N, 1, h', w')
        n = len(real)
        loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
        accuracy = torch.cat([(logits[:n] > 0).flatten(), (logits[n:] <= 0).flatten()]).float().mean()
        return loss, accuracy.detach()


class GeneratorLoss(nn.Module):
    """L1 + SSIM + sync (+ VGG perceptual): returns the weighted total and its parts (detached).

    pred, target: (N, 3, S, S) in [0, 1]; mel: (N, 1, 80, 16), the target frame's own window.
    """

    def __init__(self, weights, syncnet: SyncNet | None, perceptual: nn.Module | None = None):
        super().__init__()
        self.weights = weights
        self.syncnet = syncnet  # frozen, eval mode; None when the sync weight is 0
        self.perceptual = perceptual

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mel: torch.Tensor,
                use_sync: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        parts = {"l1": F.l1_loss(pred.float(), target.float()), "ssim": ssim_loss(pred, target)}
        total = w.l1 * parts["l1"] + w.ssim * parts["ssim"]
        if self.syncnet is not None and w.sync > 0 and use_sync:
            parts["sync"] = sync_loss(self.syncnet, pred, mel)
            total = total + w.sync * parts["sync"]
        if w.mouth > 0:
            parts["mouth"] = mouth_l1(pred, target, w.mouth_region)
            total = total + w.mouth * parts["mouth"]
        if self.perceptual is not None and w.vgg > 0:
            parts["vgg"] = self.perceptual(pred, target)
            total = total + w.vgg * parts["vgg"]
        return total, {k: v.detach() for k, v in parts.items()}  # tensors: no device sync per step


# --- optional VGG perceptual loss ------------------------------------------------------------------


def load_vgg19(path: str | Path) -> VGG19Features:
    """A frozen VGG19Features from a local torchvision-layout state dict (`features.<i>.*` keys).

    Read with weights_only=True; InputError when the file is missing or does not fit.
    """
    path = Path(path)
    state = read_state_dict(path)
    model = VGG19Features()
    wanted = model.state_dict()
    feats = {k: v for k, v in state.items() if isinstance(k, str) and k in wanted} if isinstance(state, dict) else {}
    missing = [k for k in wanted if k not in feats]
    if missing:
        raise InputError(path, f"not a VGG19 state dict (torchvision layout): missing {', '.join(missing[:3])}")
    bad = [k for k in wanted if feats[k].shape != wanted[k].shape]
    if bad:
        raise InputError(path, f"not a VGG19 state dict: shape mismatch for {', '.join(bad[:3])}")
    model.load_state_dict(feats, strict=True)
    model.eval().requires_grad_(False)
    return model


class PerceptualLoss(nn.Module):
    """Mean L1 distance between VGG19 activations of prediction and target.

    Inputs are the model's (N, 3, H, W) BGR images in [0, 1]; VGG was trained on RGB, so the
    channels are flipped first.
    """

    def __init__(self, vgg: VGG19Features):
        super().__init__()
        self.vgg = vgg

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred_feats = self.vgg(pred.flip(1))
        with torch.no_grad():
            target_feats = self.vgg(target.flip(1))
        return sum(F.l1_loss(p.float(), t.float()) for p, t in zip(pred_feats, target_feats)) / len(pred_feats)
