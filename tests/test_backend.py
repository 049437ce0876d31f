"""The OpenVINO generator backend (issue 12): the same pixels as torch, within rounding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lipsync.config import RenderConfig
from lipsync.models import build_generator

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")

from lipsync.render.backend import OpenVinoGenerator, compile_generator  # noqa: E402


def _inputs(generator, batch: int, seed: int = 0):
    c = generator.config
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 6, c.size, c.size), dtype=np.float32),
            rng.standard_normal((batch, *c.audio_shape)).astype(np.float32))


def test_openvino_matches_torch_fp32_at_any_batch():
    torch.manual_seed(0)
    generator = build_generator("tiny").eval()
    compiled = OpenVinoGenerator(generator, generator.config.size, tuple(generator.config.audio_shape), "fp32")
    for batch in (1, 3):
        x, a = _inputs(generator, batch, seed=batch)
        with torch.inference_mode():
            ref = generator(torch.from_numpy(x), torch.from_numpy(a)).numpy()
        out = compiled(x, a)
        assert out.shape == ref.shape == (batch, 3, generator.config.size, generator.config.size)
        assert np.abs(out - ref).max() * 255 < 0.5  # under half a grey level


def test_torch_backend_and_other_devices_compile_nothing():
    generator = build_generator("tiny")
    shape = tuple(generator.config.audio_shape)
    assert compile_generator(generator, 128, shape, "torch", "auto", torch.device("cpu")) is None
    assert compile_generator(generator, 128, shape, "openvino", "auto", torch.device("meta")) is None


def test_paint_uses_the_compiled_generator(tmp_path):
    from lipsync.render.paint import paint, prepare_for_inference

    torch.manual_seed(0)
    generator = build_generator("tiny").eval()
    character = type("C", (), {})()  # the attributes paint and prepare_for_inference read
    character.generator, character.size = generator, generator.config.size
    character.generator_config, character.compiled_generator = generator.config, None
    x, a = _inputs(generator, 2)
    cfg = RenderConfig(device="cpu", precision="fp32")
    torch_out = paint(character, x, a, cfg)
    prepare_for_inference(character, dataclasses.replace(cfg, backend="openvino"))
    assert character.compiled_generator is not None
    assert np.abs(paint(character, x, a, cfg) - torch_out).max() * 255 < 0.5
