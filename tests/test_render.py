"""Render: frame-exact output contract, shard contract, graceful degradation, bad inputs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clips import OBAMA, prepare_clip
from lipsync.bundle import load_character, save_bundle
from lipsync_cli.main import app
from lipsync.config import AudioConfig, GeometryConfig, RenderConfig
from lipsync.data import layout
from lipsync.io import media
from lipsync.models import build_generator, build_syncnet
from lipsync.models.audio_encoder import AudioEncoder
from lipsync.render import audio_features, render, render_segment
from lipsync.runtime import autocast_dtype, cpu_has_native_bf16

pytestmark = pytest.mark.media
runner = CliRunner()
LOSSLESS = RenderConfig(crf=0, pix_fmt="yuv444p", device="cpu")


@pytest.fixture(scope="module")
def short_dataset(tmp_path_factory, media_dir) -> Path:
    """The first 3 s of the Obama clip, prepared (75 frames)."""
    return prepare_clip(tmp_path_factory.mktemp("render_ds"), media_dir / OBAMA, 75, "obama3s")


@pytest.fixture(scope="module")
def bundle_uri(short_dataset, tmp_path_factory) -> str:
    """A tiny character (untrained weights: the render contract does not depend on training)."""
    torch.manual_seed(0)
    generator = build_generator("tiny")
    # bias the output layer so the painted mouth clearly differs from the template
    out = tmp_path_factory.mktemp("bundle") / "obama_tiny"
    save_bundle(str(out), name="obama3s", preset="tiny", generator=generator, audio_encoder=AudioEncoder(),
                syncnet=build_syncnet("tiny"), audio=AudioConfig(), geometry=GeometryConfig(),
                dataset_dir=str(short_dataset), train_info={"steps": 0})
    return str(out)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, media_dir) -> Path:
    """2.37 s of real speech (not a whole number of frames: 59.25 -> 60 frames)."""
    wav = media.read_audio(media_dir / "sadtalker_RD_Radio34_002.wav")[: int(2.37 * 16000)]
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    media.write_wav(path, wav)
    return path


def _decode(path: Path) -> list[np.ndarray]:
    return [f.copy() for f in media.iter_video_frames(path)]


def test_render_output_contract(bundle_uri, speech, short_dataset, tmp_path):
    out = tmp_path / "dub.mp4"
    result = render(bundle_uri, str(speech), str(out), LOSSLESS)
    expected = math.ceil(2.37 * 25)
    assert result.frames == expected == 60
    assert media.count_video_frames(out) == expected
    info = media.probe(out)
    assert info.has_audio and info.audio_codec == "aac" and info.fps == 25.0
    assert abs(info.duration - 2.37) <= 1 / 25 + 0.03  # container duration vs audio, within a frame (+aac)
    frames = _decode(out)
    assert len(frames) == expected
    boxes = np.load(short_dataset / layout.BOXES_FILE)
    n = len(boxes)
    from lipsync.face.geometry import bounce
    mouth_changed = []
    for k in (0, 10, 59):
        t = bounce(k, n)
        template = cv2.imread(str(layout.frame_path(short_dataset, t)))
        x0, y0, x1, y1 = boxes[t]
        outside = np.ones(template.shape[:2], bool)
        outside[max(y0, 0):y1, max(x0, 0):x1] = False
        diff = np.abs(frames[k].astype(int) - template.astype(int))
        assert diff[outside].mean() < 1.0 and np.percentile(diff[outside], 99.9) <= 8
        side = x1 - x0
        mouth = np.s_[y0 + side // 3: y0 + 2 * side // 3, x0 + side // 4: x1 - side // 4]
        mouth_changed.append(diff[mouth].mean())
    assert min(mouth_changed) > 5.0, mouth_changed


def test_segments_concatenate_to_the_same_frames(bundle_uri, speech, tmp_path):
    character = load_character(bundle_uri, device="cpu")
    wav = media.read_audio(speech)
    feats = audio_features(character, wav)
    n = len(feats)
    whole = tmp_path / "whole.mp4"
    render_segment(character, feats, 0, n, whole, cfg=LOSSLESS, start_frame=7)
    parts = []
    for i, (a, b) in enumerate([(0, 23), (23, 50), (50, n)]):
        parts.append(tmp_path / f"part{i}.mp4")
        render_segment(character, feats, a, b, parts[-1], cfg=LOSSLESS, start_frame=7)
    joined = tmp_path / "joined.mp4"
    media.concat_segments(parts, joined)
    a_frames, b_frames = _decode(whole), _decode(joined)
    assert len(a_frames) == len(b_frames) == n
    assert all(np.array_equal(x, y) for x, y in zip(a_frames, b_frames))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batch_size_does_not_change_frames(bundle_uri, speech, tmp_path, batch_size):
    character = load_character(bundle_uri, device="cpu")
    feats = audio_features(character, media.read_audio(speech))
    ref = tmp_path / "ref.mp4"
    render_segment(character, feats, 0, 12, ref, cfg=LOSSLESS)
    out = tmp_path / "b.mp4"
    cfg = RenderConfig(crf=0, pix_fmt="yuv444p", batch_size=batch_size, device="cpu")
    render_segment(character, feats, 0, 12, out, cfg=cfg)
    diffs = [np.abs(x.astype(int) - y.astype(int)).max() for x, y in zip(_decode(ref), _decode(out))]
    assert max(diffs) <= 2  # batched conv kernels may round differently by one level


def test_faceless_templates_and_nonfinite_outputs_fall_back(bundle_uri, speech, short_dataset, tmp_path):
    character = load_character(bundle_uri, device="cpu")
    feats = audio_features(character, media.read_audio(speech))
    character.frames_without_face = frozenset(range(0, character.n_templates, 2))  # even templates
    with torch.no_grad():
        for p in character.generator.parameters():
            p.fill_(float("nan"))
    out = tmp_path / "fallback.mp4"
    stats = render_segment(character, feats, 0, 10, out, cfg=LOSSLESS)
    assert stats.frames == 10 and stats.no_face == 5 and stats.nonfinite == 5
    for k, frame in enumerate(_decode(out)):
        template = cv2.imread(str(layout.frame_path(short_dataset, k)))
        assert np.abs(frame.astype(int) - template.astype(int)).mean() < 1.0


def test_silence_renders_normally(bundle_uri, tmp_path):
    silence = tmp_path / "silence.wav"
    media.write_wav(silence, np.zeros(16000, np.float32))
    out = tmp_path / "silent.mp4"
    result = runner.invoke(app, ["render", "--character", bundle_uri, "--audio", str(silence), "-o", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert media.count_video_frames(out) == 25


def _assert_cli_input_error(args: list[str], out: Path, *words: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for word in words:
        assert word in message, message
    assert not out.exists()
    assert [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


@pytest.mark.parametrize("case", ["empty", "not_audio", "corrupt", "too_long", "no_bundle", "broken_bundle"])
def test_bad_inputs(case, bundle_uri, speech, tmp_path, media_dir):
    out = tmp_path / "out.mp4"
    audio, character, extra, words = str(speech), bundle_uri, [], []
    if case == "empty":
        audio = str(tmp_path / "empty.wav")
        Path(audio).write_bytes(b"")
        words = ["empty.wav", "empty"]
    elif case == "not_audio":
        audio = str(tmp_path / "image.png")
        cv2.imwrite(audio, np.zeros((8, 8, 3), np.uint8))
        words = ["image.png", "no audio track"]
    elif case == "corrupt":
        audio = str(tmp_path / "corrupt.mp3")
        Path(audio).write_bytes(b"ID3" + bytes(range(256)) * 20)
        words = ["corrupt.mp3"]
    elif case == "too_long":
        extra, words = ["--set", "max_audio_seconds=1.0"], ["speech.wav", "maximum is 1 s"]
    elif case == "no_bundle":
        character, words = str(tmp_path / "nobody"), ["nobody"]
    elif case == "broken_bundle":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "bundle.json").write_text("{not json")
        character, words = str(broken), ["broken"]
    _assert_cli_input_error(["render", "--character", character, "--audio", audio, "-o", str(out),
                             "--device", "cpu", *extra], out, *words)


def test_existing_output_is_kept_without_overwrite(bundle_uri, speech, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["render", "--character", bundle_uri, "--audio", str(speech), "-o", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert out.read_bytes() == b"keep me"


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512_BF16/AMX): auto is fp32")
def test_bf16_is_automatic_on_this_cpu_and_visually_identical(bundle_uri, speech, tmp_path):
    """`auto` picks bf16 on a CPU with native bf16; its frames are within 40 dB PSNR of fp32's."""
    from lipsync.eval.metrics import psnr

    assert autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "auto", training=True) is None  # CPU training stays fp32
    frames = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.mp4"
        render(bundle_uri, str(speech), str(out), dataclasses.replace(LOSSLESS, precision=precision))
        frames[precision] = _decode(out)
    assert len(frames["fp32"]) == len(frames["bf16"]) == 60
    values = [psnr(a, b) for a, b in zip(frames["fp32"], frames["bf16"])]
    assert min(values) >= 40.0, min(values)
    # bf16 really ran: the generator's raw outputs differ (by far less than one level of 255 here)
    from lipsync.render.paint import paint

    character = load_character(bundle_uri, device="cpu")
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, character.size, character.size), dtype=np.float32)
    audio = rng.random((2, *character.audio.context_shape), dtype=np.float32)
    fp32 = paint(character, x, audio, dataclasses.replace(LOSSLESS, precision="fp32"))
    bf16 = paint(character, x, audio, dataclasses.replace(LOSSLESS, precision="bf16"))
    assert 0 < np.abs(fp32 - bf16).max() < 0.05
