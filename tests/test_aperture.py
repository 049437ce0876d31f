"""Mouth aperture on unseen speech (issue 16 item 1): statistics with known answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clips import OBAMA, prepare_clip
from lipsync.bundle import save_bundle
from lipsync.config import AudioConfig, GeometryConfig
from lipsync.eval.aperture import compare_apertures, footage_apertures
from lipsync.io import media
from lipsync.models import build_generator, build_syncnet
from lipsync.models.audio_encoder import AudioEncoder

SR = 16000


def test_footage_scored_against_itself_has_ratio_one():
    real = np.random.default_rng(0).uniform(0.0, 0.3, 200).astype(np.float32)
    report = compare_apertures(real, real)
    assert report["std_ratio"] == pytest.approx(1.0) and report["mean_ratio"] == pytest.approx(1.0)
    assert report["motion_ratio"] == pytest.approx(1.0)
    assert report["inside_real_range"] == pytest.approx(0.9, abs=0.02)  # 5th..95th percentile


def test_a_mumbling_dub_scores_below_one():
    real = np.random.default_rng(0).uniform(0.0, 0.3, 200).astype(np.float32)
    mumble = 0.1 + 0.3 * (real - 0.15)  # same timing, a third of the range
    report = compare_apertures(mumble, real)
    assert report["std_ratio"] == pytest.approx(0.3, rel=1e-3)
    assert report["dub"]["p95"] < report["real"]["p95"]


@pytest.fixture(scope="module")
def bundle(media_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aperture")
    dataset = prepare_clip(root, media_dir / OBAMA, 75, "obama3s")
    torch.manual_seed(0)
    save_bundle(str(root / "bundle"), name="obama3s", preset="tiny", generator=build_generator("tiny"),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=str(dataset), train_info={"steps": 0})
    return root / "bundle"


@pytest.mark.media
def test_real_footage_measures_an_open_and_moving_mouth(bundle):
    real = footage_apertures(str(bundle))
    assert len(real) == 75
    report = compare_apertures(real, real)
    assert report["real"]["std"] > 0.02 and report["real"]["p95"] > 2 * report["real"]["p5"]  # he speaks


@pytest.mark.media
def test_eval_audio_of_digital_silence_reports_a_closed_still_mouth(bundle, tmp_path):
    """`lipsync eval --audio`: a dub of 2 s of digital silence rests the mouth (silence=rest)."""
    silence = tmp_path / "silence.wav"
    media.write_wav(silence, np.zeros(2 * SR, np.float32))
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "eval", "--character", str(bundle), "--audio",
                           str(silence), "--json", str(out), "--device", "cpu", "--dub", str(tmp_path / "dub.mp4")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())["unseen_speech"]
    assert report["frames_rendered"] == 50 and report["resting_frames"] == 50
    assert report["dub"]["frames"] == 50 and (tmp_path / "dub.mp4").exists()
    assert report["dub"]["mean"] < report["real"]["p5"] + 0.02  # near-closed
    assert report["dub"]["std"] < 0.2 * report["real"]["std"]  # and still
    assert report["std_ratio"] < 0.2
    assert "mouth aperture std" in proc.stderr  # the summary line (human output goes to stderr)


def test_eval_needs_a_dataset_or_audio(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "eval", "--character", str(tmp_path / "b"),
                           "--json", str(tmp_path / "e.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--dataset" in proc.stderr + proc.stdout and "--audio" in proc.stderr + proc.stdout
