"""Optional compiled generator backend (issue 12): OpenVINO on the CPU.

Measured (docs/BENCHMARKS.md, render): the st2d-328 generator at batch 1 on the 2-core Xeon with
AMX runs 43-44 frames/s compiled by OpenVINO with bf16 inference precision, against 10.6-13.0 with
torch bf16 autocast, max difference 0.28 of 255. The backend is opt-in (`backend: openvino` in
render.yaml or `--set backend=openvino`) and needs the `openvino` extra; the torch module stays the
model of record (bundles hold its weights) and is converted in memory, once per loaded character.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from lipsync.errors import InputError
from lipsync.runtime import autocast_dtype


class OpenVinoGenerator:
    """The generator compiled by OpenVINO for the CPU: (B, 6, S, S), (B, *audio) float32 arrays ->
    (B, 3, S, S) float32, with a dynamic batch dimension."""

    def __init__(self, generator: nn.Module, size: int, audio_shape: tuple[int, ...], precision: str,
                 threads: int = 0):
        try:
            import openvino as ov
        except ImportError:
            raise InputError(None, "backend openvino needs the openvino package: pip install 'lipsync[openvino]'"
                             ) from None
        example = (torch.zeros(1, 6, size, size), torch.zeros(1, *audio_shape))
        with warnings.catch_warnings():  # the tracer's TracerWarnings on the shape checks (they hold here)
            warnings.simplefilter("ignore")
            model = ov.convert_model(generator.to(memory_format=torch.contiguous_format).float().eval(),
                                     example_input=example,
                                     input=[ov.PartialShape([-1, 6, size, size]),
                                            ov.PartialShape([-1, *audio_shape])])
        bf16 = autocast_dtype(torch.device("cpu"), precision) is not None
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()

    def __call__(self, inputs: np.ndarray, audio: np.ndarray) -> np.ndarray:
        out = self._request.infer([np.ascontiguousarray(inputs, np.float32), np.ascontiguousarray(audio, np.float32)])
        return np.asarray(out[0], np.float32)


def compile_generator(generator: nn.Module, size: int, audio_shape: tuple[int, ...], backend: str, precision: str,
                      device: torch.device, threads: int = 0) -> OpenVinoGenerator | None:
    """The compiled generator for `backend`, or None for torch (and on devices other than the CPU)."""
    if backend == "torch" or device.type != "cpu":
        return None
    return OpenVinoGenerator(generator, size, audio_shape, precision, threads)
