"""Named model sizes (`tiny`, `st2d-160`, `st2d-328`): small builders over the generic modules.

The numbers live in configs/models.yaml (read through lipsync.config, which owns config files);
this module turns a preset name into frozen config dataclasses and modules, and measures them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lipsync import config as config_io
from lipsync.errors import InputError
from lipsync.models.generator import AUDIO_FEATURE_SHAPES, Generator, GeneratorConfig
from lipsync.models.syncnet import SyncNet, SyncNetConfig

PRESETS_CONFIG = "models"  # configs/models.yaml
DEFAULT_AUDIO_BACKEND = "ave"


@dataclass(frozen=True)
class ModelPreset:
    """Everything a preset fixes: both architectures and the crop geometry around the model."""

    name: str
    crop_margin: int  # the crop is (S + 2m)^2, the model sees crop[m:m+S, m:m+S]; set only in models.yaml
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    syncnet: SyncNetConfig = field(default_factory=SyncNetConfig)

    @property
    def size(self) -> int:
        return self.generator.size

    @property
    def crop_size(self) -> int:
        return self.generator.size + 2 * self.crop_margin


@lru_cache(maxsize=1)
def _all_presets() -> dict[str, ModelPreset]:
    table = config_io.load_yaml(PRESETS_CONFIG).get("presets") or {}
    return {name: config_io.from_dict(ModelPreset, {"name": name, **body}) for name, body in table.items()}


def preset_names() -> tuple[str, ...]:
    return tuple(_all_presets())


def model_preset(name: str) -> ModelPreset:
    """The preset called `name`; InputError listing the choices if there is none."""
    presets = _all_presets()
    if name not in presets:
        raise InputError(None, f"unknown preset {name!r} (choose from: {', '.join(presets)})")
    return presets[name]


def with_audio_backend(config: GeneratorConfig, backend: str) -> GeneratorConfig:
    """`config` with its audio input shaped for `backend` (ave 32x16x16, hubert 32x32x32, wenet 256x16x32)."""
    if backend not in AUDIO_FEATURE_SHAPES:
        raise InputError(None, f"unknown audio backend {backend!r} (choose from: {', '.join(AUDIO_FEATURE_SHAPES)})")
    channels, h, w = AUDIO_FEATURE_SHAPES[backend]
    return dataclasses.replace(config, audio_channels=channels, audio_hw=(h, w))


def generator_config(preset_name: str, audio_backend: str = DEFAULT_AUDIO_BACKEND) -> GeneratorConfig:
    return with_audio_backend(model_preset(preset_name).generator, audio_backend)


def syncnet_config(preset_name: str) -> SyncNetConfig:
    return model_preset(preset_name).syncnet


def build_generator(preset: str | GeneratorConfig, audio_backend: str = DEFAULT_AUDIO_BACKEND) -> Generator:
    """A freshly initialised Generator from a preset name (or an explicit config, used as is)."""
    config = preset if isinstance(preset, GeneratorConfig) else generator_config(preset, audio_backend)
    return Generator(config)


def build_syncnet(preset: str | SyncNetConfig) -> SyncNet:
    config = preset if isinstance(preset, SyncNetConfig) else syncnet_config(preset)
    return SyncNet(config)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter values (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in module.parameters())


def generator_flops_per_frame(preset: str | GeneratorConfig) -> int:
    """FLOPs of one generator forward at batch 1 (2 per multiply-accumulate), counted by torch."""
    model = build_generator(preset).eval()
    c = model.config
    x = torch.zeros(1, c.in_channels, c.size, c.size)
    audio = torch.zeros(1, *c.audio_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, audio)
    return int(counter.get_total_flops())
