"""Bounded resources (issue 11, items 6 and 7): long audio and hostile bundle contents.

Long audio is refused from its probed duration before decoding, accepted audio is decoded and
turned into features in bounded chunks (equal to the whole-file computation), and bundle
contents (architecture configs, crop boxes, frame size) are checked against the weights, the
preset and the frame before anything is allocated from them. Real ffmpeg, real clips.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lipsync.audio import (
    MelStream,
    encode_frames,
    iter_features,
    mel_windows,
    melspectrogram,
    num_video_frames,
)
from lipsync.config import AudioConfig, RenderConfig
from lipsync.errors import InputError
from lipsync.io import media
from lipsync.models.audio_encoder import AudioEncoder
from lipsync.render.pipeline import audio_features, load_audio

CFG = AudioConfig()


def silence_flac(path: Path, seconds: int, rate: int = 8000) -> Path:
    """`seconds` of digital silence as FLAC: hours of audio in a few MB, written in seconds."""
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"anullsrc=r={rate}:cl=mono", "-t", str(seconds), "-c:a", "flac", str(path)], check=True)
    return path


class _Character:
    """What audio_features reads of a character: its AudioConfig and AudioEncoder."""

    def __init__(self, audio: AudioConfig = CFG):
        torch.manual_seed(0)
        self.audio = audio
        self.audio_encoder = AudioEncoder().eval()


@pytest.fixture(scope="module")
def speech(media_dir) -> np.ndarray:
    return media.read_audio(media_dir / "iplap_audio2.wav")  # 21.34 s, 44.1 kHz stereo -> 16 kHz mono


# --- 6. long audio: refused before decoding, decoded and featurised in bounded chunks ------------


def _peak_rss_growth_mb(script: str) -> dict:
    """Run `script` (which prints one JSON object) in a fresh interpreter; add the growth of its
    peak RSS from the line `base = ...` on, in MB."""
    wrapped = "import json, resource\n" + textwrap.dedent(script).replace(
        "#BASE", "_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss").replace(
        "#PEAK", "_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss")
    wrapped += "\nresult['growth_mb'] = (_peak - _base) / 1024\nprint(json.dumps(result))\n"
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_four_hours_are_refused_from_the_probed_duration_without_decoding(tmp_path):
    long = silence_flac(tmp_path / "four_hours.flac", 4 * 3600)
    result = _peak_rss_growth_mb(f"""
        from lipsync.config import RenderConfig
        from lipsync.errors import InputError
        from lipsync.render.pipeline import load_audio
        #BASE
        try:
            load_audio({str(long)!r}, RenderConfig(), 16000)  # default max_audio_seconds: 3600
            result = {{"error": None}}
        except InputError as e:
            result = {{"error": str(e)}}
        #PEAK
    """)
    assert result["error"] == (f"{long}: audio is 14400 s long; the maximum is 3600 s "
                               "(raise max_audio_seconds to allow it)")
    # decoding 4 h to 16 kHz float32 would take 921 MB (the old code peaked near 3 GB)
    assert result["growth_mb"] < 50, result


def test_audio_just_over_the_limit_is_cut_while_decoding(media_dir):
    # 8.00 s of speech; the limit (7.6 s) is within the header tolerance, so the decoder decides
    path = media_dir / "sadtalker_RD_Radio34_002.wav"
    with pytest.raises(InputError, match=r"audio is longer than the maximum of 7.6 s \(raise max_audio_seconds"):
        load_audio(path, RenderConfig(max_audio_seconds=7.6), 16000)
    assert load_audio(path, RenderConfig(max_audio_seconds=8.0), 16000).size == 128000


def test_read_audio_stops_after_max_samples(media_dir):
    path = media_dir / "iplap_audio2.wav"
    whole = media.read_audio(path)
    cut = media.read_audio(path, max_samples=50000)
    assert cut.size == 50001
    np.testing.assert_array_equal(cut, whole[:50001])


def test_iter_audio_chunks_are_bounded_and_equal_read_audio(media_dir):
    path = media_dir / "sadtalker_chinese_news.wav"  # 48 kHz stereo
    chunks = list(media.iter_audio(path, chunk_samples=10000))
    assert all(c.size == 10000 for c in chunks[:-1]) and 0 < chunks[-1].size <= 10000
    np.testing.assert_array_equal(np.concatenate(chunks), media.read_audio(path))


def test_stopping_iter_audio_early_kills_ffmpeg(media_dir):
    import psutil

    gen = media.iter_audio(media_dir / "iplap_audio2.wav", chunk_samples=1000)
    next(gen)
    gen.close()
    assert [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()] == []


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
@pytest.mark.parametrize("chunk", [1, 777, 1601, 16000, 10**6])
def test_streamed_mel_equals_the_whole_file_mel(speech, pad_mode, chunk):
    cfg = AudioConfig(stft_pad_mode=pad_mode)
    wav = speech[: 3 * 16000 + 123] if chunk == 1 else speech
    stream = MelStream(cfg)
    parts = [stream.push(wav[i:i + chunk]) for i in range(0, wav.size, chunk)] + [stream.finish()]
    streamed = np.concatenate(parts, axis=1)
    whole = melspectrogram(wav, cfg)
    assert streamed.shape == whole.shape == (80, 1 + wav.size // 200)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    assert np.abs(whole).max() > 1  # real speech, not silence


@pytest.mark.parametrize("n", [1, 640, 1599, 1600, 2001])
def test_streamed_mel_of_very_short_audio(speech, n):
    stream = MelStream(CFG)
    streamed = np.concatenate([stream.push(speech[:n]), stream.finish()], axis=1)
    np.testing.assert_allclose(streamed, melspectrogram(speech[:n], CFG), rtol=0, atol=1e-5)


def test_chunked_features_equal_whole_file_features(speech):
    character = _Character()
    n = num_video_frames(speech.size, CFG)
    whole = encode_frames(character.audio_encoder, mel_windows(melspectrogram(speech, CFG), n, CFG))
    assert whole.shape == (n, 512) == (534, 512)
    np.testing.assert_allclose(audio_features(character, speech), whole, rtol=0, atol=1e-5)
    # from a stream of odd-sized chunks (as media.iter_audio gives), small feature blocks
    chunks = (speech[i:i + 5003] for i in range(0, speech.size, 5003))
    blocks = list(iter_features(character.audio_encoder, chunks, CFG, chunk_frames=100))
    assert [len(b) for b in blocks] == [100] * 5 + [34]
    np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=0, atol=1e-5)
    # audio_features takes the stream too
    streamed = audio_features(character, (speech[i:i + 7919] for i in range(0, speech.size, 7919)))
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)


def test_streaming_one_hour_of_audio_keeps_memory_flat(tmp_path):
    """Decode 1 h through the pipe and build its whole mel stream in a fresh process: the peak
    stays within a small bound (decoding it whole takes 230 MB, its centred STFT 1.8 GB)."""
    hour = silence_flac(tmp_path / "hour.flac", 3600)
    result = _peak_rss_growth_mb(f"""
        from lipsync.audio import MelStream
        from lipsync.config import AudioConfig
        from lipsync.io import media
        stream = MelStream(AudioConfig())
        gen = media.iter_audio({str(hour)!r}, 16000)
        columns = stream.push(next(gen)).shape[1]
        #BASE
        columns += sum(stream.push(c).shape[1] for c in gen) + stream.finish().shape[1]
        #PEAK
        result = {{"columns": columns, "samples": stream.n_samples}}
    """)
    assert result["samples"] == 3600 * 16000
    assert result["columns"] == 1 + 3600 * 16000 // 200
    assert result["growth_mb"] < 50, result


# --- 7. bundle contents are bounded before anything is allocated from them ------------------------

FRAME = 450  # the Obama clip's frames
BOX = (132, 150, 318, 336)  # a 186 px face box, as prepare measures on that clip


@pytest.fixture(scope="module")
def bundle(media_dir, tmp_path_factory) -> Path:
    """A tiny-preset bundle over 3 real frames (untrained weights: loading does not care)."""
    from lipsync.bundle import save_bundle
    from lipsync.config import GeometryConfig
    from lipsync.data import layout
    from lipsync.models import build_generator, build_syncnet

    root = tmp_path_factory.mktemp("bounds")
    ds = root / "ds"
    (ds / layout.FRAMES_DIR).mkdir(parents=True)
    (ds / layout.LANDMARKS_DIR).mkdir()
    import cv2

    for i, frame in enumerate(media.iter_video_frames(media_dir / "edtalk_uncrop_Obama.mp4")):
        if i == 3:
            break
        cv2.imwrite(str(layout.frame_path(ds, i)), frame)
    wav = media.read_audio(media_dir / "edtalk_uncrop_Obama.mp4")[: 3 * 640]
    media.write_wav(ds / layout.AUDIO_FILE, wav)
    np.save(ds / layout.MEL_FILE, melspectrogram(wav, CFG))
    np.save(ds / layout.BOXES_FILE, np.array([BOX] * 3, np.int32))
    np.save(ds / layout.LANDMARKS_FILE, np.zeros((3, 468, 2), np.float32))
    (ds / layout.META_FILE).write_text(json.dumps({
        "dataset_format": layout.DATASET_FORMAT, "landmark_scheme": layout.LANDMARK_SCHEME, "n_frames": 3,
        "frame_size": [FRAME, FRAME], "frames_without_face": []}))
    torch.manual_seed(0)
    out = root / "obama_tiny"
    save_bundle(str(out), name="obama3", preset="tiny", generator=build_generator("tiny"),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=CFG, geometry=GeometryConfig(),
                dataset_dir=str(ds), train_info={"steps": 0})
    return out


def _tampered(bundle: Path, tmp_path: Path, edit_info=None, boxes=None) -> Path:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    if edit_info is not None:
        info = json.loads((copy / "bundle.json").read_text())
        edit_info(info)
        (copy / "bundle.json").write_text(json.dumps(info))
    if boxes is not None:
        np.save(copy / "templates" / "boxes.npy", boxes)
    return copy


def _load_error(path: Path) -> str:
    from lipsync.bundle import load_character

    with pytest.raises(InputError) as err:
        load_character(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_untouched_bundle_loads(bundle):
    from lipsync.bundle import load_character

    character = load_character(str(bundle))
    assert character.frame_size == (FRAME, FRAME) and character.n_templates == 3
    assert tuple(character.boxes[0]) == BOX


def _set(path: str, value):
    def edit(info):
        node = info
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit,words", [
    (_set("generator.widths", [8, 16, 32, 64, 4096]), "generator config does not fit generator.safetensors"),
    (_set("generator.widths", [8, 16, 32, 64, 10**7]), "exceed 4096"),
    (_set("generator.expand_ratio", 6), "generator config does not fit generator.safetensors"),
    (_set("generator.size", 100000), "generator size 100000 is outside [32, 1024]"),
    (_set("syncnet.face_widths", [16, 32, 64, 128, 2048]), "syncnet config does not fit syncnet.safetensors"),
    (_set("syncnet.face_size", [64, 50000]), "syncnet face_size [64, 50000]"),
    (_set("audio.n_mels", 4000), "do not fit the AudioEncoder"),
    (_set("audio.n_fft", 10**8), "audio config out of range"),
    (_set("audio.context", 4), "context_shape"),
    (_set("crop_margin", 1000), "crop_margin 1000"),
    (_set("frame_size", [450, 10**6]), "frame_size [450, 1000000] is not two integers"),
    (_set("frame_size", [450, 452]), "frame_size 450x452 does not match the template frames (450x450)"),
])
def test_edited_bundle_json_is_refused_in_one_line(bundle, tmp_path, edit, words):
    message = _load_error(_tampered(bundle, tmp_path, edit_info=edit))
    assert words in message, message


def test_edited_widths_are_refused_before_the_model_is_allocated(bundle, tmp_path):
    """widths (8, 16, 32, 64, 4096) would build a ~1 GB generator; the check reads only headers."""
    path = _tampered(bundle, tmp_path, edit_info=_set("generator.widths", [8, 16, 32, 64, 4096]))
    result = _peak_rss_growth_mb(f"""
        from lipsync.bundle import load_character
        from lipsync.errors import InputError
        #BASE
        try:
            load_character({str(path)!r})
            result = {{"error": None}}
        except InputError as e:
            result = {{"error": str(e)}}
        #PEAK
    """)
    assert "does not fit generator.safetensors" in result["error"]
    assert result["growth_mb"] < 100, result


@pytest.mark.parametrize("boxes,words", [
    (np.array([BOX, BOX, (0, 0, 10**9, 10**9)], np.int64), "box 2 (0, 0, 1000000000, 1000000000) is larger than 900 px"),
    (np.array([BOX, BOX, (0, 0, 2**40, 2**40)], np.int64), "outside the int32 range"),
    (np.array([BOX, (10, 10, 200, 100), BOX], np.int32), "box 1 (10, 10, 200, 100) is not square"),
    (np.array([BOX, BOX, (50, 50, 50, 50)], np.int32), "box 2 (50, 50, 50, 50) is degenerate"),
    (np.array([BOX, (300, 300, 200, 200), BOX], np.int32), "box 1 (300, 300, 200, 200) is degenerate"),
    (np.array([(-500, 0, -300, 200), BOX, BOX], np.int32), "box 0 (-500, 0, -300, 200) is entirely outside"),
    (np.array([BOX, BOX, (460, 0, 560, 100)], np.int32), "entirely outside the 450x450 frame"),
    (np.array([BOX, BOX, (np.nan, 0, 1, 1)], np.float32), "non-finite or fractional"),
    (np.array([BOX, BOX], np.int32), "do not match n_templates=3"),
    (np.zeros((3, 4), np.complex64), "must be (n, 4) numbers"),
])
def test_bad_boxes_are_refused_in_one_line(bundle, tmp_path, boxes, words):
    message = _load_error(_tampered(bundle, tmp_path, boxes=boxes))
    assert words in message, message


def test_boxes_overrunning_the_frame_edges_are_legal(bundle, tmp_path):
    """crop() repeats edge pixels for the part of a box outside the frame: such boxes load and crop."""
    from lipsync.bundle import load_character
    from lipsync.face import geometry

    overrun = np.array([(-60, 300, 140, 500), (400, -20, 600, 180), (-400, -400, 500, 500)], np.int32)
    character = load_character(str(_tampered(bundle, tmp_path, boxes=overrun)))
    frame = np.zeros((FRAME, FRAME, 3), np.uint8)
    for box in character.boxes:
        assert geometry.crop(frame, box, character.crop_size).shape == (character.crop_size,) * 2 + (3,)
