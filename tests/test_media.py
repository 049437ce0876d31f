"""lipsync.io.media against the real ffmpeg binary, on synthetic and real media."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from lipsync.errors import InputError, MediaError
from lipsync.io import media


def _frames(n: int, w: int = 64, h: int = 48, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, i, axis=1) for i in range(n)]


def _tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


def test_encode_decode_lossless_roundtrip_with_audio(tmp_path):
    frames = _frames(30)
    wav = tmp_path / "a.wav"
    media.write_wav(wav, _tone(1.2))
    out = tmp_path / "v.mp4"
    with media.VideoWriter(out, 64, 48, media.EncodeSettings(crf=0, pix_fmt="yuv444p"), audio=wav) as w:
        for f in frames:
            w.write(f)
    info = media.probe(out)
    assert info.has_video and info.has_audio and info.audio_codec == "aac"
    assert (info.width, info.height) == (64, 48)
    assert media.count_video_frames(out) == 30
    decoded = list(media.iter_video_frames(out))
    assert len(decoded) == 30
    # yuv444p at crf 0 is lossless up to the BGR<->YUV conversion
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(decoded, frames)) < 2.0


def test_concat_of_segments_equals_single_encode(tmp_path):
    frames = _frames(40)
    settings = media.EncodeSettings(crf=0)
    single = tmp_path / "single.mp4"
    with media.VideoWriter(single, 64, 48, settings) as w:
        for f in frames:
            w.write(f)
    segs = []
    for k, (a, b) in enumerate([(0, 13), (13, 25), (25, 40)]):
        seg = tmp_path / f"seg{k}.mp4"
        with media.VideoWriter(seg, 64, 48, settings) as w:
            for f in frames[a:b]:
                w.write(f)
        segs.append(seg)
    wav = tmp_path / "a.wav"
    media.write_wav(wav, _tone(1.6))
    joined = tmp_path / "joined.mp4"
    media.concat_segments(segs, joined, audio=wav)
    assert media.count_video_frames(joined) == 40
    assert media.probe(joined).has_audio
    for a, b in zip(media.iter_video_frames(single), media.iter_video_frames(joined)):
        assert np.array_equal(a, b)


def test_writer_exception_leaves_no_file_and_no_process(tmp_path):
    out = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError):
        with media.VideoWriter(out, 64, 48) as w:
            w.write(_frames(1)[0])
            raise RuntimeError("boom")
    assert not out.exists()
    assert _ffmpeg_children() == []


def test_reader_stopped_early_leaves_no_ffmpeg(tmp_path):
    out = tmp_path / "v.mp4"
    with media.VideoWriter(out, 64, 48) as w:
        for f in _frames(50):
            w.write(f)
    gen = media.iter_video_frames(out)
    next(gen)
    next(gen)
    gen.close()
    assert _ffmpeg_children() == []


def test_read_audio_resamples_and_downmixes(tmp_path):
    wav = tmp_path / "a.wav"
    media.write_wav(wav, _tone(2.0, sr=44100), sample_rate=44100)
    audio = media.read_audio(wav, 16000)
    assert audio.dtype == np.float32
    assert abs(audio.size - 32000) <= 2
    assert 0.25 < np.abs(audio).max() < 0.35


@pytest.mark.parametrize("content,problem", [
    (None, "file not found"),
    (b"", "empty"),
    (b"this is not a video at all " * 200, "not a media file"),
])
def test_bad_inputs_give_one_line_errors(tmp_path, content, problem):
    path = tmp_path / "input.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        list(media.iter_video_frames(path))
    assert problem in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_video_is_reported(tmp_path):
    out = tmp_path / "v.mp4"
    rng = np.random.default_rng(1)
    with media.VideoWriter(out, 128, 128) as w:  # +faststart: moov first, so only the data is cut
        for _ in range(150):
            w.write(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    data = out.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="truncated or corrupt"):
        list(media.iter_video_frames(cut))


def test_audio_file_without_audio_track(tmp_path):
    out = tmp_path / "silent_video.mp4"
    with media.VideoWriter(out, 64, 48) as w:
        for f in _frames(5):
            w.write(f)
    with pytest.raises(InputError, match="has no audio track"):
        media.read_audio(out)


@pytest.mark.media
@pytest.mark.parametrize("name,frames,size", [
    ("edtalk_uncrop_Obama.mp4", (500, 501), (450, 450)),
    ("latentsync_demo1_video.mp4", (250, 251), (1080, 1920)),  # HEVC portrait
    ("retalking_face_1.mp4", (152, 154), (700, 700)),  # VFR ~22 fps -> 25 fps
    ("sadtalker_WDA_KatieHill_000.mp4", (200, 201), (512, 512)),  # MPEG-4 part 2
])
def test_real_videos_decode_at_25fps(media_dir, name, frames, size):
    path = media_dir / name
    info = media.probe(path)
    assert (info.width, info.height) == size
    n = 0
    for frame in media.iter_video_frames(path, info=info):
        assert frame.shape == (size[1], size[0], 3)
        n += 1
    assert frames[0] <= n <= frames[1]


@pytest.mark.media
def test_real_audio_decodes_to_16k_mono(media_dir):
    audio = media.read_audio(media_dir / "edtalk_uncrop_Obama.mp4")
    assert abs(audio.size / 16000 - 20.0) <= 0.04
    speech = media.read_audio(media_dir / "sadtalker_chinese_news.wav")  # 48 kHz stereo
    assert abs(speech.size / 16000 - 8.0) <= 0.01
    assert np.abs(speech).max() > 0.05


def test_odd_frame_sizes_are_padded_for_yuv420(tmp_path):
    out = tmp_path / "odd.mp4"
    frame = np.full((47, 63, 3), 120, np.uint8)
    with media.VideoWriter(out, 63, 47) as w:
        for _ in range(3):
            w.write(frame)
    info = media.probe(out)
    assert (info.width, info.height) == (64, 48)
    decoded = next(media.iter_video_frames(out))
    assert abs(float(np.median(decoded[:40, :56])) - 120) <= 3  # the picture is intact, not scaled
    assert decoded[:, 63].mean() < 40 and decoded[47, :].mean() < 40  # one dark column and row added
