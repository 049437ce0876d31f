"""The one paint path: template frame -> crop -> model input -> generator -> image -> paste-back.

`lipsync render`, the dub actors and `lipsync eval` all paint through these functions, so eval
measures exactly what render ships (same crop, mask, precision, memory format and paste-back).
"""

from __future__ import annotations

import numpy as np
import torch

from lipsync.bundle import Character
from lipsync.config import RenderConfig
from lipsync.data.inputs import generator_input, to_image
from lipsync.face import geometry
from lipsync.render.backend import compile_generator
from lipsync.render.rest import RestingMouth, rested_crop
from lipsync.runtime import autocast


def prepare_for_inference(character: Character, cfg: RenderConfig) -> None:
    """Put the generator in the memory format measured fastest (channels_last; see BENCHMARKS.md),
    or compile it with the configured backend (lipsync.render.backend)."""
    device = next(character.generator.parameters()).device
    character.compiled_generator = compile_generator(character.generator, character.size,
                                                     tuple(character.generator_config.audio_shape), cfg.backend,
                                                     cfg.precision, device, cfg.torch_threads)
    if cfg.channels_last and character.compiled_generator is None:
        character.generator.to(memory_format=torch.channels_last)


def model_crop(character: Character, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) frame -> its (S+2m, S+2m, 3) crop and the inner (S, S, 3) model view (a view into it)."""
    crop_full = geometry.crop(frame, box, character.crop_size)
    return crop_full, geometry.inner(crop_full, character.margin)


def model_input(character: Character, face: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 model view -> (6, S, S) float32: the frame as its own reference + its masked copy."""
    return generator_input(face, face, character.geometry)


def paint(character: Character, inputs: np.ndarray, audio: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Generator forward: (B, 6, S, S) + (B, *context_shape) -> (B, 3, S, S) float32 on the CPU."""
    if character.compiled_generator is not None:
        return character.compiled_generator(inputs, audio)
    device = next(character.generator.parameters()).device
    x = torch.from_numpy(inputs).to(device, non_blocking=True)
    a = torch.from_numpy(audio).to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, cfg.precision):
        out = character.generator(x, a)
    return out.float().cpu().numpy()


def warm_up(character: Character, cfg: RenderConfig) -> None:
    """One generator forward on zeros at the render's batch shape, output discarded.

    The first forward pays the kernels' set-up (oneDNN primitives, CUDA context and autotuning); a
    dub actor does it while the first item is still being planned, so the first shard does not.
    """
    size = character.size
    inputs = np.zeros((cfg.batch_size, 6, size, size), np.float32)  # (B, 6, S, S)
    audio = np.zeros((cfg.batch_size, *character.generator_config.audio_shape), np.float32)  # (B, *context)
    paint(character, inputs, audio, cfg)


def match_colour(generated: np.ndarray, template: np.ndarray, band: int) -> np.ndarray:
    """(S, S, 3) uint8 generated crop with each channel shifted so that its mean over the border band
    (`band` px wide) equals the template's there: the generator's colour drift leaves no seam."""
    if band <= 0:
        return generated
    ring = np.ones(generated.shape[:2], bool)
    ring[band:-band, band:-band] = False
    shift = template[ring].astype(np.float32).mean(axis=0) - generated[ring].astype(np.float32).mean(axis=0)
    return np.clip(np.rint(generated.astype(np.float32) + shift), 0, 255).astype(np.uint8)


def painted_frame(character: Character, frame: np.ndarray, box: np.ndarray, crop_full: np.ndarray,
                  output: np.ndarray | None, rest: RestingMouth | None = None,
                  rest_weight: float = 0.0, colour_band: float = 0.0) -> np.ndarray | None:
    """The generated (3, S, S) mouth pasted into `frame`; None when the output is not finite.

    `colour_band` (fraction of S, RenderConfig.colour_match_band): colour-match the generated crop
    to the template over that border band first. With a resting mouth and a rest weight > 0 (a
    pause, lipsync.render.rest), the generated crop is cross-faded with the rested one; at weight 1
    the output is not used (it may be None).
    """
    if rest is not None and rest_weight >= 1.0:
        return geometry.paste_back(frame, box, rested_crop(crop_full, None, rest, 1.0), character.geometry)
    if output is None or not np.isfinite(output).all():
        return None
    m, s = character.margin, character.size
    generated = crop_full.copy()
    generated[m:m + s, m:m + s] = match_colour(to_image(output), crop_full[m:m + s, m:m + s],
                                               round(colour_band * s))
    if rest is not None and rest_weight > 0.0:
        generated = rested_crop(crop_full, generated, rest, rest_weight)
    return geometry.paste_back(frame, box, generated, character.geometry)
