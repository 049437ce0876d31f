"""Silence handling (issue 13 items 1-2): voice activity per frame and the resting mouth in pauses.

Unit tests of the pure frame logic, then real speech with 1 s of digital silence and 1 s of room
noise spliced in, rendered by a tiny untrained character: the pause frames show the character's
own closed mouth, still, and render identically whether the pause is in one shard or across two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clips import OBAMA, prepare_clip

from lipsync.audio import vad
from lipsync.bundle import load_character, save_bundle
from lipsync.config import AudioConfig, GeometryConfig, RenderConfig
from lipsync.eval.metrics import psnr
from lipsync.face import geometry
from lipsync.face.landmarks import FaceMeshDetector
from lipsync.io import media
from lipsync.models import build_generator, build_syncnet
from lipsync.models.audio_encoder import AudioEncoder
from lipsync.render import audio_features, render, render_segment
from lipsync.render.rest import resting_mouth, resting_template

SR = 16000
FPS = 25
SPEECH = "sadtalker_RD_Radio34_002.wav"


# --- pure logic --------------------------------------------------------------------------------


def test_a_frame_is_voiced_when_any_overlapping_window_is():
    audio = AudioConfig()
    probs = np.zeros(10, np.float32)  # 10 windows of 512 samples = 5120 samples = 8 frames of 640
    probs[2] = 0.9  # samples [1024, 1536): frames 1 ([640, 1280)) and 2 ([1280, 1920))
    voiced = vad.voiced_frames(probs, 9, audio, threshold=0.5)  # frame 8 is past the windows
    assert voiced.tolist() == [False, True, True, False, False, False, False, False, False]
    probs[-1] = 0.9
    assert vad.voiced_frames(probs, 9, audio, 0.5)[-1]  # the tail takes the last window


def test_short_pauses_count_as_speech_long_ones_do_not():
    voiced = np.array([1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1], bool)
    filled = vad.fill_short_pauses(voiced, min_pause=3)
    assert filled.tolist() == [True] * 6 + [False] * 6 + [True]


def test_rest_weights_ramp_inside_pause_edges_but_not_at_the_file_edges():
    voiced = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    w = vad.rest_weights(voiced, fade=2)
    np.testing.assert_allclose(w[:4], [1, 1, 2 / 3, 1 / 3], rtol=1e-6)  # leading silence: ramps only into speech
    assert w[4:6].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(w[6:12], [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3], rtol=1e-6)
    assert w[12] == 0.0
    np.testing.assert_allclose(w[13:], [1 / 3, 2 / 3, 1, 1], rtol=1e-6)  # trailing: no ramp at the end
    assert vad.rest_weights(voiced, fade=0)[6:12].tolist() == [1.0] * 6


def test_keep_turns_silence_handling_off():
    assert vad.frame_rest_weights(np.zeros(SR, np.float32), 25, AudioConfig(), RenderConfig(silence="keep")) is None


def test_mouth_aperture_is_inner_lip_gap_over_eye_distance():
    lms = np.zeros((468, 2), np.float32)
    lms[geometry.EYE_OUTER_RIGHT] = (100, 100)
    lms[geometry.EYE_OUTER_LEFT] = (200, 100)
    lms[geometry.INNER_LIP_TOP] = (150, 200)
    lms[geometry.INNER_LIP_BOTTOM] = (150, 215)
    assert geometry.mouth_aperture(lms) == pytest.approx(0.15)
    assert geometry.mouth_aperture(np.stack([lms, lms])).shape == (2,)


def _templates(apertures: list[float], pauses: set[int], without_face: set[int] = frozenset()):
    """A stand-in for a Character with these real inner-lip apertures (eye distance 100 px)."""
    from types import SimpleNamespace

    lms = np.zeros((len(apertures), 468, 2), np.float32)
    lms[:, geometry.EYE_OUTER_RIGHT] = (100, 100)
    lms[:, geometry.EYE_OUTER_LEFT] = (200, 100)
    lms[:, geometry.INNER_LIP_TOP] = (150, 200)
    lms[:, geometry.INNER_LIP_BOTTOM, 0] = 150
    lms[:, geometry.INNER_LIP_BOTTOM, 1] = 200 + 100 * np.asarray(apertures)
    return SimpleNamespace(name="t", landmarks=lms, footage_pauses=frozenset(pauses),
                           frames_without_face=frozenset(without_face))


def test_the_mouth_rests_on_the_median_mouth_of_the_footages_own_pauses():
    apertures = [0.01, 0.30, 0.08, 0.12, 0.05, 0.25, 0.10]  # frame 0: a pressed "m" while speaking
    cfg = RenderConfig(rest_template="pause", rest_min_pause_templates=3)
    character = _templates(apertures, pauses={2, 3, 4, 6})
    assert resting_template(character, cfg) == 2  # pause apertures 0.05 0.08 0.10 0.12: the lower median
    assert resting_template(character, cfg, exclude=[2]) == 6  # 0.05 0.10 0.12 (an evaluation's held-out frame)
    assert resting_template(character, RenderConfig(rest_template="closed", rest_min_pause_templates=3)) == 0
    # too few pause frames (or all excluded) -> the most closed usable template
    assert resting_template(character, cfg, exclude=[2, 3]) == 0
    assert resting_template(_templates(apertures, pauses={2, 3, 4}, without_face={0}), cfg) == 2
    assert resting_template(_templates(apertures, pauses={2, 3}, without_face={0}), cfg) == 4
    with pytest.raises(ValueError, match="no template with a face"):
        resting_template(_templates([0.1, 0.2], pauses=set(), without_face={0, 1}), cfg)


# --- real speech with a pause ------------------------------------------------------------------


def room_noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Room tone: brown noise at about -50 dBFS RMS plus a faint 50 Hz mains hum."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove the drift
    brown *= 10 ** (-50 / 20) / (brown.std() + 1e-12)
    hum = 10 ** (-56 / 20) * np.sin(2 * np.pi * 50 * np.arange(n) / SR)
    return (brown + hum).astype(np.float32)


@pytest.fixture(scope="module")
def paused_speech(media_dir, tmp_path_factory) -> tuple[Path, slice]:
    """2 s speech + 1 s digital silence + 1 s room noise + 2 s speech (150 frames); the pause's frames."""
    speech = media.read_audio(media_dir / SPEECH)
    wav = np.concatenate([speech[:2 * SR], np.zeros(SR, np.float32), room_noise(1.0), speech[2 * SR:4 * SR]])
    path = tmp_path_factory.mktemp("paused") / "paused.wav"
    media.write_wav(path, wav)
    return path, slice(2 * FPS, 4 * FPS)


@pytest.fixture(scope="module")
def character_uri(media_dir, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("silence")
    dataset = prepare_clip(root, media_dir / OBAMA, 100, "obama4s")
    torch.manual_seed(0)
    out = root / "bundle"
    save_bundle(str(out), name="obama4s", preset="tiny", generator=build_generator("tiny"),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=str(dataset), train_info={"steps": 0})
    return str(out)


def _apertures(path: Path) -> np.ndarray:
    with FaceMeshDetector() as detector:
        lms = [detector.detect(frame) for frame in media.iter_video_frames(path)]
    assert all(p is not None for p in lms), "a rendered frame has no detectable face"
    return geometry.mouth_aperture(np.stack(lms))


@pytest.mark.media
def test_vad_finds_the_spliced_pause_and_the_speech(paused_speech):
    path, pause = paused_speech
    wav = media.read_audio(path)
    n = int(np.ceil(wav.size * FPS / SR))
    voiced = vad.voiced_frames(vad.speech_probabilities(wav, SR), n, AudioConfig(), 0.5)
    assert not voiced[pause.start + 2:pause.stop - 2].any(), "silence or room noise taken for speech"
    assert voiced[:pause.start].mean() > 0.6 and voiced[pause.stop:].mean() > 0.6, "speech not found"
    # streamed in chunks of any size, the decision is the same
    chunks = [wav[i:i + 7001] for i in range(0, wav.size, 7001)]
    assert np.array_equal(vad.speech_probabilities(chunks, SR), vad.speech_probabilities(wav, SR))


@pytest.mark.media
def test_the_per_thread_vad_model_answers_as_a_fresh_one(paused_speech):
    """The model is loaded once per thread and reset per call: the same probabilities as a freshly
    loaded model, call after call (its recurrent state does not leak) and in another thread."""
    import threading

    from silero_vad import load_silero_vad

    wav = media.read_audio(paused_speech[0])[: 3 * SR]
    fresh = load_silero_vad()
    with torch.inference_mode():
        expected = np.asarray([float(fresh(torch.from_numpy(np.ascontiguousarray(w)), SR))
                               for w in vad._windows([wav])], np.float32)
    first = vad.speech_probabilities(wav, SR)
    model = vad._thread_model()
    again = vad.speech_probabilities(wav[::-1].copy(), SR), vad.speech_probabilities(wav, SR)
    assert vad._thread_model() is model  # loaded once in this thread
    other: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: other.append(vad.speech_probabilities(wav, SR)))
    thread.start()
    thread.join()
    for probs in (first, again[1], other[0]):
        assert np.array_equal(probs, expected)


@pytest.mark.media
def test_the_pause_shows_the_characters_own_closed_mouth_still(character_uri, paused_speech, tmp_path):
    path, pause = paused_speech
    out = tmp_path / "rest.mp4"
    result = render(character_uri, str(path), str(out), RenderConfig(device="cpu"))
    assert result.frames == 150 == media.count_video_frames(out)  # the frame count is unchanged
    assert result.stats.resting >= 40

    character = load_character(character_uri)
    real = geometry.mouth_aperture(character.landmarks)  # the character's real footage
    closed = real <= np.quantile(real, 0.25)
    closed_range = (real[closed].min(), real[closed].max())
    real_motion = np.abs(np.diff(real))[closed[1:] & closed[:-1]]
    inside = slice(pause.start + 4, pause.stop - 4)  # the pause without its cross-fades
    rendered = _apertures(out)
    assert rendered[inside].max() <= closed_range[1] + 0.01, (rendered[inside], closed_range)
    assert np.abs(np.diff(rendered[inside])).max() <= max(real_motion.max(), 0.01)
    # and it is the resting template's mouth: its real aperture is the smallest of the footage
    # the bundle found the footage's own pause (frames 78-88 of the whole clip by VAD) ...
    assert character.footage_pauses and character.footage_pauses <= set(range(78, 88)), character.footage_pauses
    # ... but 4 s of this footage hold fewer pause frames than rest_min_pause_templates: the most closed one
    assert len(character.footage_pauses) < RenderConfig().rest_min_pause_templates
    assert real[resting_template(character, RenderConfig())] == pytest.approx(real.min())

    # the pixels are the resting template's mouth (pasted onto each frame's own template) ...
    mouth = resting_mouth(character, RenderConfig())
    assert _band_psnr(out, character, mouth, inside) >= 30.0
    # ... where silence=keep paints the untrained generator's blob
    keep = render(character_uri, str(path), str(tmp_path / "keep.mp4"), RenderConfig(device="cpu", silence="keep"))
    assert keep.stats.resting == 0
    assert _band_psnr(tmp_path / "keep.mp4", character, mouth, inside) < 25.0  # measured 20.1


def _band_psnr(path: Path, character, mouth, frames: slice) -> float:
    """Worst PSNR over `frames` of the mouth region of each frame's crop vs the resting template's."""
    s, m = character.size, character.margin
    band = np.s_[m + int(0.3 * s):m + int(0.8 * s), m + int(0.2 * s):m + int(0.8 * s)]
    decoded = list(media.iter_video_frames(path))
    return min(psnr(geometry.crop(decoded[k], character.boxes[geometry.bounce(k, character.n_templates)],
                                  character.crop_size)[band], mouth.crop[band])
               for k in range(frames.start, frames.stop))


@pytest.mark.media
def test_a_pause_across_a_shard_boundary_renders_as_inside_one(character_uri, paused_speech, tmp_path):
    path, pause = paused_speech
    cfg = RenderConfig(device="cpu")
    character = load_character(character_uri)
    wav = media.read_audio(path)
    feats = audio_features(character, wav)
    rest = vad.frame_rest_weights(wav, len(feats), character.audio, cfg)
    assert rest is not None and rest[pause.start + 4:pause.stop - 4].min() == 1.0
    cut = pause.start + 20  # inside the pause
    render_segment(character, feats, 0, len(feats), tmp_path / "one.mp4", cfg=cfg, crf=0, rest=rest)
    render_segment(character, feats, 0, cut, tmp_path / "a.mp4", cfg=cfg, crf=0, rest=rest)
    render_segment(character, feats, cut, len(feats), tmp_path / "b.mp4", cfg=cfg, crf=0, rest=rest)
    one = list(media.iter_video_frames(tmp_path / "one.mp4"))
    two = list(media.iter_video_frames(tmp_path / "a.mp4")) + list(media.iter_video_frames(tmp_path / "b.mp4"))
    assert len(one) == len(two) == len(feats)
    assert all(np.array_equal(x, y) for x, y in zip(one, two))


def test_rested_crop_at_full_weight_needs_no_generated_crop_and_cross_fades_below_it():
    """Pure logic: weight 1 is the template with the resting band (the generator's output is not
    used, as in a pause); below 1 the generated crop is mixed in, and is then required."""
    from lipsync.render.rest import RestingMouth, rested_crop

    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    resting = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    alpha = np.zeros((12, 12, 1), np.float32)
    alpha[6:] = 1.0  # the band: the lower half
    mouth = RestingMouth(template=0, aperture=0.0, crop=resting, alpha=alpha)
    full = rested_crop(crop, None, mouth, 1.0)
    assert np.array_equal(full[:6], crop[:6]) and np.array_equal(full[6:], resting[6:])
    generated = np.full_like(crop, 100)
    assert np.array_equal(rested_crop(crop, generated, mouth, 1.0), full)  # the generated crop is not used
    half = rested_crop(crop, generated, mouth, 0.5).astype(np.int32)
    expected = np.rint((generated.astype(np.float32) + full.astype(np.float32)) / 2)
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(ValueError, match="needs the generated crop"):
        rested_crop(crop, None, mouth, 0.5)
