"""Audio front-ends ave | hubert | wenet: frame counts on the 25 fps clock, streaming, errors, and
prepare -> train -> render end to end with tiny HuBERT / WeNet models the tests build themselves."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clips import OBAMA, prepare_clip
from lipsync.audio import frontend
from lipsync.audio.frontend import audio_config_for, frame_features, load_frontend
from lipsync.bundle import BUNDLE_FILE, load_character
from lipsync.config import AudioConfig, ConfigError, RenderConfig, TrainConfig, load_config
from lipsync.errors import InputError
from lipsync.io import media
from lipsync.models.generator import AUDIO_FEATURE_SHAPES
from lipsync_cli.main import app

from frontend_models import WENET_META, tiny_hubert_dir, tiny_wenet_onnx

runner = CliRunner()
DURATIONS = (0.03, 1.0, 3.37)  # shorter than a frame, whole frames, an odd length (84.25 -> 85 frames)


def _missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"optional package(s) {', '.join(absent)} not installed (pip install -e '.[dev]')" if absent else None


needs_hubert = pytest.mark.skipif(bool(_missing("transformers")), reason=str(_missing("transformers")))
needs_wenet = pytest.mark.skipif(bool(_missing("onnxruntime", "kaldi_native_fbank", "onnx")),
                                 reason=str(_missing("onnxruntime", "kaldi_native_fbank", "onnx")))


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one torch thread (conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory) -> Path:
    if _missing("transformers"):
        pytest.skip(_missing("transformers"))
    return tiny_hubert_dir(tmp_path_factory.mktemp("hubert"))


@pytest.fixture(scope="module")
def wenet_onnx(tmp_path_factory) -> Path:
    if _missing("onnxruntime", "kaldi_native_fbank", "onnx"):
        pytest.skip(_missing("onnxruntime", "kaldi_native_fbank", "onnx"))
    return tiny_wenet_onnx(tmp_path_factory.mktemp("wenet") / "encoder.onnx")


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.02 * rng.standard_normal(n)).astype(np.float32)


# --- the contract every front-end keeps -----------------------------------------------------------


def test_feature_widths_fill_the_generator_stacks():
    cfg = AudioConfig()
    for backend in frontend.BACKENDS:
        audio = audio_config_for(cfg, backend)
        assert audio.context_shape == AUDIO_FEATURE_SHAPES[backend]
        assert math.prod(audio.context_shape) == 2 * audio.context * audio.feature_dim
    assert audio_config_for(cfg, "ave") == cfg  # the default path is unchanged


@pytest.mark.parametrize("backend", ["hubert", "wenet"])
def test_one_feature_row_per_video_frame_and_chunking_does_not_matter(backend, request):
    weights = request.getfixturevalue("hubert_dir" if backend == "hubert" else "wenet_onnx")
    model = load_frontend(backend, str(weights))
    cfg = audio_config_for(AudioConfig(), backend)
    for seconds in DURATIONS:
        wav = _speechlike(seconds)
        feats = frame_features(backend, model, wav, cfg)
        assert feats.shape == (math.ceil(wav.size * 25 / 16000), cfg.feature_dim), seconds
        assert feats.dtype == np.float32 and np.isfinite(feats).all()
    chunked = frame_features(backend, model, (wav[i:i + 777] for i in range(0, wav.size, 777)), cfg)
    np.testing.assert_array_equal(chunked, feats)


@needs_hubert
def test_hubert_long_audio_goes_in_windows_of_bounded_size(hubert_dir):
    from lipsync.audio.hubert import iter_hubert_features

    model = load_frontend("hubert", str(hubert_dir))
    cfg = audio_config_for(AudioConfig(), "hubert")
    wav = _speechlike(3.37)
    seen = []
    forward = model.model.forward

    def spy(x, *a, **k):
        seen.append(x.shape[1])
        return forward(x, *a, **k)

    model.model.forward = spy
    blocks = list(iter_hubert_features(model, [wav], cfg, window_frames=40, context_frames=6))
    feats = np.concatenate(blocks)
    assert feats.shape == (85, 2048)
    assert len(seen) == math.ceil(170 / 40) and max(seen) <= 320 * (40 + 12 - 1) + 400
    # far from the window edges the conv features line up with one forward over all the audio
    whole = frame_features("hubert", load_frontend("hubert", str(hubert_dir)), wav, cfg)
    assert np.corrcoef(feats[5:80].ravel(), whole[5:80].ravel())[0, 1] > 0.9


@needs_wenet
def test_wenet_windows_are_centred_on_the_video_frames(wenet_onnx):
    from lipsync.audio.wenet import encoder_frame_times, window_positions

    fe = load_frontend("wenet", str(wenet_onnx))
    assert (fe.chunk_size, fe.subsampling, fe.right_context, fe.left_chunks) == (16, 4, 6, 4)
    k = np.arange(0, 100, 7)
    pos = window_positions(fe, k, 25)  # (len(k), 16) in encoder frames
    times = encoder_frame_times(fe, np.float64(0)) + pos * fe.subsampling * 0.010
    np.testing.assert_allclose(times.mean(axis=1), (k + 0.5) / 25)  # centred on each video frame
    np.testing.assert_allclose(np.diff(pos, axis=1), 1.0)  # 16 consecutive encoder frames


@needs_wenet
def test_wenet_export_without_att_mask_inputs_and_with_growing_cache(tmp_path):
    """A -1 left-chunk export: ONNX drops att_mask / required_cache_size; att_cache grows."""
    path = tiny_wenet_onnx(tmp_path / "encoder.onnx", {**WENET_META, "left_chunks": -1})
    fe = load_frontend("wenet", str(path))
    assert "att_mask" not in fe.inputs
    cfg = audio_config_for(AudioConfig(), "wenet")
    assert frame_features("wenet", fe, _speechlike(3.37), cfg).shape == (85, 8192)


# --- errors ----------------------------------------------------------------------------------------


def test_train_config_needs_weights_for_hubert_and_wenet():
    with pytest.raises(ConfigError, match="audio-weights"):
        load_config(TrainConfig, flags={"audio_features": {"backend": "hubert"}})
    with pytest.raises(ConfigError, match="audio_features.backend"):
        load_config(TrainConfig, flags={"audio_features": {"backend": "mfcc", "weights": "x"}})
    assert load_config(TrainConfig).audio_features.backend == "ave"


@pytest.mark.parametrize("backend", ["hubert", "wenet"])
def test_missing_weights_and_hub_names_are_refused_naming_the_path(backend, tmp_path):
    if frontend.EXTRAS[backend][0] and _missing(*frontend.EXTRAS[backend][0]):
        pytest.skip(_missing(*frontend.EXTRAS[backend][0]))
    for weights in (str(tmp_path / "nowhere"), "facebook/hubert-large-ls960-ft"):
        with pytest.raises(InputError, match="never downloaded") as info:
            load_frontend(backend, weights)
        assert weights in str(info.value)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(InputError, match="emptydir|junk.onnx"):
        load_frontend(backend, str(tmp_path / ("emptydir" if backend == "hubert" else "junk.onnx")))


@pytest.mark.parametrize("backend", ["hubert", "wenet"])
def test_a_missing_optional_package_names_the_extra(backend, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    absent = set(frontend.EXTRAS[backend][0])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    with pytest.raises(InputError, match=rf"lipsync\[{backend}\]") as info:
        load_frontend(backend, str(tmp_path / "weights"))
    assert str(tmp_path / "weights") in str(info.value)


# --- prepare -> train -> render, per front-end ----------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, media_dir) -> Path:
    """The first 2 s of the Obama clip, prepared (50 frames)."""
    return prepare_clip(tmp_path_factory.mktemp("fe_ds"), media_dir / OBAMA, 50, "obama2s")


QUICK = ["batch_size=4", "syncnet_batch_size=8", "val_fraction=0.2", "val_max_frames=10", "val_negatives_per_frame=1", "log_every=1",
         "val_every=1000", "checkpoint_every=1000"]


@pytest.mark.media
@pytest.mark.parametrize("backend", ["ave", "hubert", "wenet"])
def test_train_and_render_end_to_end(backend, dataset, tmp_path, media_dir, request):
    weights = None if backend == "ave" else \
        str(request.getfixturevalue("hubert_dir" if backend == "hubert" else "wenet_onnx"))
    out = tmp_path / "bundle"
    args = ["train", "--dataset", str(dataset), "--out", str(out), "--preset", "tiny", "--steps", "2",
            "--syncnet-steps", "2", "--device", "cpu", "--audio-features", backend,
            *(["--audio-weights", weights] if weights else []), *[a for kv in QUICK for a in ("--set", kv)]]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    info = json.loads((out / BUNDLE_FILE).read_text())
    assert info["audio_features"] == {"backend": backend, "weights": weights}
    assert info["generator"]["audio_channels"] == AUDIO_FEATURE_SHAPES[backend][0]
    assert tuple(info["audio"]["context_shape"]) == AUDIO_FEATURE_SHAPES[backend]
    character = load_character(str(out))
    assert character.audio_backend == backend
    # features per frame, from the bundle's own front-end
    from lipsync.audio.features import context_range
    from lipsync.render import audio_features, render

    speech = media.read_audio(media_dir / "sadtalker_RD_Radio34_002.wav")[: int(3.37 * 16000)]
    feats = audio_features(character, speech)
    assert feats.shape == (85, frontend.FRAME_FEATURE_DIMS[backend])
    assert context_range(feats, 0, 3, character.audio).shape == (3, *AUDIO_FEATURE_SHAPES[backend])
    # render: the bundle decides the front-end; the output has one frame per 40 ms of audio
    wav_path = tmp_path / "speech.wav"
    media.write_wav(wav_path, speech)
    video = tmp_path / "dub.mp4"
    result = render(str(out), str(wav_path), str(video), RenderConfig(device="cpu", crf=0, pix_fmt="yuv444p"))
    assert result.frames == 85 == math.ceil(3.37 * 25)
    assert sum(1 for _ in media.iter_video_frames(video)) == 85
