"""The mouth-region L1 term of the generator loss (issue 16 item 2): known values."""

from __future__ import annotations

import pytest
import torch

from lipsync.config import LossWeights
from lipsync.train.losses import GeneratorLoss, mouth_l1


def test_mouth_l1_only_sees_the_mouth_region():
    pred = torch.zeros(2, 3, 40, 40)
    target = torch.zeros(2, 3, 40, 40)
    target[..., 0:4, :] = 1.0  # forehead: outside (0.15, 0.2, 0.85, 0.65) -> rows 8..26, cols 6..34
    assert mouth_l1(pred, target, (0.15, 0.2, 0.85, 0.65)).item() == 0.0
    target[..., 10:20, 10:20] = 1.0  # 100 of the region's 18 x 28 pixels
    assert mouth_l1(pred, target, (0.15, 0.2, 0.85, 0.65)).item() == pytest.approx(100 / (18 * 28))


def test_generator_loss_adds_the_mouth_term_only_when_weighted():
    pred, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    off_total, off_parts = GeneratorLoss(LossWeights(mouth=0.0), None)(pred, target, None, use_sync=False)
    on_total, on_parts = GeneratorLoss(LossWeights(mouth=3.0), None)(pred, target, None, use_sync=False)
    assert "mouth" not in off_parts
    assert on_total.item() == pytest.approx(off_total.item() + 3.0 * on_parts["mouth"].item(), rel=1e-5)
