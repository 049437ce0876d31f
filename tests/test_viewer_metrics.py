"""Eval metrics of what viewers see (issue 13 item 6): known answers on synthetic inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.config import GeometryConfig
from lipsync.eval import metrics
from lipsync.face import geometry


def _mouth(opening: float) -> np.ndarray:
    """40 lip points: a circle of radius 20 squashed vertically to `opening`."""
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    return np.stack([160 + 20 * np.cos(t), 200 + opening * np.sin(t)], axis=1).astype(np.float32)


def test_lip_jitter_counts_shape_change_not_head_motion():
    still = [_mouth(5.0)] * 4
    assert metrics.lip_jitter(still) == 0.0
    moved = [_mouth(5.0) + d for d in (0.0, 7.0, -3.0, 12.0)]  # the whole mouth translates: head motion
    assert metrics.lip_jitter(moved) == pytest.approx(0.0, abs=1e-3)
    talking = [_mouth(o) for o in (5.0, 10.0, 5.0, 10.0)]
    expected = np.abs(np.sin(np.linspace(0, 2 * np.pi, 40, endpoint=False))).mean() * 5.0
    assert metrics.lip_jitter(talking) == pytest.approx(expected, rel=1e-4)
    assert metrics.lip_jitter([_mouth(5.0), None, _mouth(9.0)]) is None  # no consecutive pair with faces


def test_flicker_is_the_mean_grey_change_per_frame():
    flat = np.full((40, 60, 3), 100, np.uint8)
    assert metrics.flicker([flat, flat, flat]) == 0.0
    assert metrics.flicker([flat, flat + 10, flat, flat + 10]) == pytest.approx(10.0, abs=0.01)
    assert metrics.flicker([flat]) is None


def test_sharpness_drops_when_the_lips_blur():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (9, 9), 3)
    assert metrics.sharpness(blurred) < 0.1 * metrics.sharpness(sharp)


def test_seam_measures_a_colour_step_at_the_paste_box():
    yy, xx = np.mgrid[0:300, 0:300]
    frame = np.stack([(xx * 0.3 + yy * 0.2) % 256] * 3, axis=2).astype(np.uint8)  # a smooth ramp
    box = (80, 80, 220, 220)
    clean = metrics.seam(frame, box, GeometryConfig().feather)
    shifted = frame.copy()
    shifted[80:220, 80:220] = np.clip(shifted[80:220, 80:220].astype(int) + 40, 0, 255)
    stepped = metrics.seam(shifted, box, GeometryConfig().feather)
    assert clean[0] < 6.0 and stepped[0] > clean[0] + 30.0
    # the feathered paste-back of the same shifted crop leaves the colour step but spreads the edge
    pasted = geometry.paste_back(frame, box, shifted[80:220, 80:220], GeometryConfig())
    feathered = metrics.seam(pasted, box, GeometryConfig().feather)
    assert feathered[0] > clean[0] + 30.0 and feathered[1] < stepped[1]
    assert metrics.seam(frame, (-10, 0, 130, 140), 0.08) is None  # box past the frame edge


def test_colour_matching_removes_a_generators_colour_drift_at_the_seam():
    from lipsync.render.paint import match_colour

    yy, xx = np.mgrid[0:300, 0:300]
    frame = np.stack([(xx * 0.3 + yy * 0.2) % 256, (xx * 0.1) % 256, (yy * 0.25) % 256], axis=2).astype(np.uint8)
    box = (80, 80, 220, 220)
    template = frame[80:220, 80:220]
    drifted = np.clip(template.astype(int) + np.array([25, -15, 30]), 0, 255).astype(np.uint8)  # generator drift
    matched = match_colour(drifted, template, band=14)
    assert np.abs(matched.astype(int) - template.astype(int)).mean() < 1.0
    cfg = GeometryConfig()
    clean = metrics.seam(frame, box, cfg.feather)[0]
    assert metrics.seam(geometry.paste_back(frame, box, drifted, cfg), box, cfg.feather)[0] > clean + 15
    assert metrics.seam(geometry.paste_back(frame, box, matched, cfg), box, cfg.feather)[0] < clean + 1
    assert match_colour(drifted, template, band=0) is drifted  # off


def test_feature_smoothing_is_a_centred_average_that_shards_agree_on():
    from lipsync.render.pipeline import smooth_features

    feats = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    assert smooth_features(feats, 1) is feats
    smooth = smooth_features(feats, 5)
    np.testing.assert_allclose(smooth[10], feats[8:13].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(smooth[0], feats[0:3].mean(axis=0), rtol=1e-5)  # edge: what exists
    assert smooth.dtype == np.float32 and smooth.shape == feats.shape
    with pytest.raises(ValueError):
        smooth_features(feats, 4)
