"""Evaluation: metric known answers, the sync offset search, and `lipsync eval` end to end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lipsync.eval import metrics
from lipsync.eval.metrics import lip_indices, lip_points, lmd, mouth_box, psnr, ssim, sync_score


def _texture(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth random colour texture (blurred noise), so small shifts change it a little, large ones more."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


# --- image metrics -----------------------------------------------------------------------------------


def test_identical_images_are_perfect():
    img = _texture()
    assert psnr(img, img.copy()) == float("inf")
    assert ssim(img, img.copy()) == pytest.approx(1.0, abs=1e-9)


def test_psnr_known_value_and_shift_lowers_it():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 110, np.uint8)  # MSE = 100
    assert psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / 100.0))
    img = _texture(1)
    scores = [psnr(img[:, 8:-8], img[:, 8 + s:img.shape[1] - 8 + s]) for s in (0, 1, 3)]
    assert scores[0] == float("inf") and scores[1] > scores[2] > 10.0
    sims = [ssim(img[:, 8:-8], img[:, 8 + s:img.shape[1] - 8 + s]) for s in (0, 1, 3)]
    assert sims[0] > sims[1] > sims[2]


def test_image_metrics_reject_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


# --- lips --------------------------------------------------------------------------------------------


def test_lip_indices_are_the_face_mesh_lips():
    idx = lip_indices()
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    # mouth corners (61, 291), upper/lower outer lip centre (0, 17), inner lip centre (13, 14)
    assert {0, 13, 14, 17, 61, 291} <= set(idx.tolist())
    assert 1 not in idx and 234 not in idx  # nose tip, jaw


def test_lip_points_are_in_crop_pixels():
    lms = np.zeros((468, 2), np.float32)
    lms[lip_indices()] = (150.0, 175.0)
    pts = lip_points(lms, (100, 100, 200, 200), 320)  # 100 px box -> 320 px crop
    assert pts.shape == (40, 2)
    np.testing.assert_allclose(pts, np.tile([[160.0, 240.0]], (40, 1)))


def test_lmd_known_answers():
    real = np.array([[[0.0, 0.0], [0.0, 10.0]]])  # a mouth 10 px open
    assert lmd(real, real) == 0.0
    assert lmd(real + [37.0, -5.0], real) == pytest.approx(0.0)  # translation is centred away
    wide = np.array([[[0.0, 0.0], [0.0, 20.0]]])  # 20 px open: each point 5 px off after centring
    assert lmd(wide, real) == pytest.approx(5.0)
    assert lmd(np.concatenate([real, wide]), np.concatenate([real, real])) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        lmd(real, wide[:, :1])


def test_mouth_box_pads_and_clips():
    pts = np.array([[100.0, 200.0], [140.0, 230.0]])
    assert mouth_box(pts, 320, 0.0) == (100, 200, 140, 230)
    assert mouth_box(pts, 320, 0.1) == (68, 168, 172, 262)
    assert mouth_box(np.array([[0.0, 300.0], [50.0, 330.0]]), 320, 0.05) == (0, 284, 66, 320)


# --- sync offset search ------------------------------------------------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.abs(), dim=1)


def test_score_from_embeddings_finds_a_known_shift():
    torch.manual_seed(0)
    n_audio, shift, d = 60, 3, 32
    audio_emb = _unit(torch.randn(n_audio, d))
    frames = np.arange(20, 40)
    face_emb = audio_emb[torch.from_numpy(frames + shift)]  # face k looks like the audio of frame k + 3
    curve = metrics.offset_curve(face_emb, audio_emb, frames, np.arange(n_audio), max_offset=10)
    score = metrics.score_from_curve(curve, 10)
    assert score.offset == shift
    assert score.distance == pytest.approx(0.0, abs=1e-6)
    assert score.confidence > 0.1
    assert score.offsets == list(range(-10, 11)) and len(score.curve) == 21


def test_offsets_without_audio_are_left_out():
    emb = _unit(torch.randn(5, 8))
    curve = metrics.offset_curve(emb, emb, np.arange(5), np.arange(5), max_offset=6)
    assert np.isnan(curve[0]) and np.isnan(curve[-1])  # offsets -6 and +6 reach no audio frame
    score = metrics.score_from_curve(curve, 6)
    assert score.offset == 0 and score.curve[0] is None


class CodeSyncNet(nn.Module):
    """An oracle SyncNet: a face's code is its lower half's brightness, a mel window's code its mean;
    embeddings are one-hot codes, so a face matches exactly the audio that carries its code."""

    def __init__(self, codes: int = 16):
        super().__init__()
        self.config = SimpleNamespace(face_size=(8, 16))
        self.codes = codes
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device

    def _one_hot(self, value: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(value.round().long().clamp(0, self.codes - 1), self.codes).float()

    def forward(self, face: torch.Tensor, mel: torch.Tensor):
        face_code = face.mean(dim=(1, 2, 3)) * (self.codes - 1)
        return self._one_hot(face_code), self._one_hot(mel.mean(dim=(1, 2, 3)))


def test_sync_score_pairs_faces_with_their_audio_through_the_model():
    rng = np.random.default_rng(0)
    codes = CodeSyncNet(16)
    n_audio, shift, audio_offset = 80, -4, -2
    audio_code = np.concatenate([rng.permutation(16) for _ in range(n_audio // 16)])  # (80,)
    frames = np.arange(50, 70)
    # face k carries the code of audio frame k + audio_offset + shift
    face_code = audio_code[frames + audio_offset + shift]
    faces = torch.zeros(len(frames), 3, 32, 32)
    faces[:, :, 16:, :] = torch.from_numpy(face_code / 15.0).float()[:, None, None, None]

    def windows_of(audio_frames):
        return np.broadcast_to(audio_code[audio_frames][:, None, None], (len(audio_frames), 80, 16)).astype(np.float32)

    score = sync_score(codes, faces, frames, windows_of, n_audio, max_offset=10, audio_offset=audio_offset,
                       batch_size=7)
    assert score.offset == shift and score.distance == pytest.approx(0.0)
    assert score.confidence == pytest.approx(1.0)  # every other offset pairs different codes
    unshifted = sync_score(codes, faces, frames + shift, windows_of, n_audio, max_offset=10,
                           audio_offset=audio_offset)
    assert unshifted.offset == 0
