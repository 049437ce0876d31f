"""`lipsync prepare`: real videos become datasets; every bad input is one line, exit 2, nothing left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lipsync_cli.main import app
from lipsync.data import layout
from lipsync.io import media

runner = CliRunner()


def run_prepare(video: Path, out: Path, *extra: str):
    return runner.invoke(app, ["prepare", str(video), "--name", "t", "--out", str(out), *extra])


def assert_input_error(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for word in words:
        assert word in message, message
    assert not out.exists(), "nothing may be left at the output path"
    leftovers = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == [], leftovers


def _frames_of(video: Path, n: int) -> list[np.ndarray]:
    frames = []
    for frame in media.iter_video_frames(video):
        frames.append(frame)
        if len(frames) == n:
            break
    return frames


def _encode(path: Path, frames: list[np.ndarray], audio: Path | None) -> Path:
    h, w = frames[0].shape[:2]
    with media.VideoWriter(path, w, h, audio=audio) as writer:
        for f in frames:
            writer.write(f)
    return path


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(3 * 16000) / 16000
    media.write_wav(path, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return path


# --- bad inputs (no real media needed) ----------------------------------------------------------


def test_missing_file(tmp_path):
    out = tmp_path / "ds"
    assert_input_error(run_prepare(tmp_path / "nope.mp4", out), out, "nope.mp4", "file not found")


def test_not_a_video(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are my notes, not a video\n" * 50)
    out = tmp_path / "ds"
    assert_input_error(run_prepare(bad, out), out, "notes.mp4", "not a media file")


def test_audio_only_file_is_not_a_video(tmp_path, speech_wav):
    out = tmp_path / "ds"
    assert_input_error(run_prepare(speech_wav, out), out, "tone.wav", "no video stream")


def test_video_without_face(tmp_path, speech_wav):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(50)]
    video = _encode(tmp_path / "noise.mp4", frames, speech_wav)
    out = tmp_path / "ds"
    assert_input_error(run_prepare(video, out), out, "noise.mp4", "no face found in any")


# --- bad inputs built from a real clip ---------------------------------------------------------


@pytest.fixture(scope="module")
def obama_frames(media_dir) -> list[np.ndarray]:
    return _frames_of(media_dir / "edtalk_uncrop_Obama.mp4", 40)


@pytest.mark.media
def test_video_without_audio_track(tmp_path, obama_frames):
    video = _encode(tmp_path / "mute.mp4", obama_frames[:20], None)
    out = tmp_path / "ds"
    assert_input_error(run_prepare(video, out), out, "mute.mp4", "no audio track")


@pytest.mark.media
def test_most_frames_without_face(tmp_path, obama_frames, speech_wav):
    blank = np.full_like(obama_frames[0], 90)
    video = _encode(tmp_path / "mostly_wall.mp4", obama_frames[:15] + [blank] * 35, speech_wav)
    out = tmp_path / "ds"
    assert_input_error(run_prepare(video, out), out, "mostly_wall.mp4", "no face found in 35 of 50 frames")


@pytest.mark.media
def test_a_few_faceless_frames_are_interpolated_and_recorded(tmp_path, obama_frames, speech_wav):
    frames = list(obama_frames[:30])
    frames[10] = frames[11] = np.full_like(frames[0], 90)
    video = _encode(tmp_path / "gap.mp4", frames, speech_wav)
    out = tmp_path / "ds"
    result = run_prepare(video, out)
    assert result.exit_code == 0, result.output
    meta = layout.validate_dataset(out)
    assert meta["frames_without_face"] == [10, 11]
    boxes = np.load(out / layout.BOXES_FILE)
    # interpolated boxes lie between their neighbours
    assert np.all(boxes[10] >= np.minimum(boxes[9], boxes[12]) - 1)
    assert np.all(boxes[10] <= np.maximum(boxes[9], boxes[12]) + 1)


@pytest.mark.media
def test_truncated_video(tmp_path, media_dir):
    data = (media_dir / "edtalk_uncrop_Obama.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end: gone
    out = tmp_path / "ds"
    assert_input_error(run_prepare(cut, out), out, "cut.mp4", "corrupt")


@pytest.mark.media
def test_truncated_faststart_video(tmp_path, obama_frames, speech_wav):
    video = _encode(tmp_path / "full.mp4", obama_frames * 2, speech_wav)
    data = video.read_bytes()
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov first (+faststart): the frames are cut
    out = tmp_path / "ds"
    assert_input_error(run_prepare(cut, out), out, "cut_fast.mp4", "truncated or corrupt")


# --- the real thing -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def obama_dataset(tmp_path_factory, media_dir) -> Path:
    out = tmp_path_factory.mktemp("prep") / "obama"
    preview = out.parent / "crops.png"
    result = runner.invoke(app, ["prepare", str(media_dir / "edtalk_uncrop_Obama.mp4"), "--name", "obama",
                                 "--out", str(out), "--preview", str(preview)])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.media
def test_obama_dataset_matches_the_contract(obama_dataset):
    meta = layout.validate_dataset(obama_dataset)
    n = meta["n_frames"]
    assert n in (500, 501)
    assert len(list((obama_dataset / layout.FRAMES_DIR).iterdir())) == n
    assert len(list((obama_dataset / layout.LANDMARKS_DIR).iterdir())) == n
    assert layout.read_lms(layout.lms_path(obama_dataset, 0)).shape == (468, 2)
    wav = media.read_audio(obama_dataset / layout.AUDIO_FILE)
    assert abs(wav.size / 16000 - 20.0) <= 0.04
    info = media.probe(obama_dataset / layout.AUDIO_FILE)
    assert info.audio_rate == 16000 and "mono" not in info.audio_codec  # codec name, rate checked
    assert np.load(obama_dataset / layout.BOXES_FILE).shape == (n, 4)
    mel = np.load(obama_dataset / layout.MEL_FILE)
    assert mel.shape[0] == 80 and abs(mel.shape[1] - 20.0 * 80) <= 2
    assert meta["frame_size"] == [450, 450] and meta["fps"] == 25
    assert len(meta["source"]["sha256"]) == 64 and meta["tool"]["version"]
    assert (obama_dataset.parent / "crops.png").stat().st_size > 10_000


@pytest.mark.media
def test_mouth_and_chin_inside_every_crop(obama_dataset):
    lms = np.load(obama_dataset / layout.LANDMARKS_FILE)
    boxes = np.load(obama_dataset / layout.BOXES_FILE)
    mouth_and_chin = lms[:, [13, 14, 61, 291, 152], :]  # lips, mouth corners, chin
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    inside = (mouth_and_chin[..., 0] > x0) & (mouth_and_chin[..., 0] < x1) & \
             (mouth_and_chin[..., 1] > y0) & (mouth_and_chin[..., 1] < y1)
    assert inside.all()


@pytest.mark.media
def test_existing_output_needs_overwrite(obama_dataset, media_dir, tmp_path):
    before = json.loads((obama_dataset / layout.META_FILE).read_text())["created"]
    result = run_prepare(media_dir / "edtalk_uncrop_Obama.mp4", obama_dataset)
    assert result.exit_code == 2 and "already exists" in " ".join(result.output.split())
    assert json.loads((obama_dataset / layout.META_FILE).read_text())["created"] == before


@pytest.mark.media
@pytest.mark.parametrize("name,frames", [
    ("latentsync_demo1_video.mp4", (250, 251)),  # HEVC, 1080x1920 portrait
    ("retalking_face_1.mp4", (152, 154)),  # VFR ~22 fps -> 25 fps
    ("sadtalker_WDA_KatieHill_000.mp4", (200, 201)),  # MPEG-4 part 2
    ("edtalk_pose_source2.mp4", (1499, 1500)),  # 60 s, 256x256
])
def test_every_shared_video_prepares(tmp_path, media_dir, name, frames):
    out = tmp_path / "ds"
    result = run_prepare(media_dir / name, out)
    assert result.exit_code == 0, result.output
    meta = layout.validate_dataset(out)
    assert frames[0] <= meta["n_frames"] <= frames[1]
    assert len(meta["frames_without_face"]) < 0.1 * meta["n_frames"]


def test_real_entry_point_exits_2_with_one_line(tmp_path):
    """The installed console entry (not the test runner) maps input errors to exit code 2."""
    proc = subprocess.run([sys.executable, "-m", "lipsync_cli", "prepare", str(tmp_path / "missing.mp4"),
                           "--name", "x", "--out", str(tmp_path / "ds")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.mp4: file not found" in lines[0]
