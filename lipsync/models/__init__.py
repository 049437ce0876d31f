"""Models: pure nn.Modules (generator UNet, AudioEncoder, SyncNet), their presets and weight files.

Only `pretrained.py` touches files (torch/safetensors weights); presets read configs/models.yaml
through lipsync.config.
"""

from lipsync.models.audio_encoder import AudioEncoder
from lipsync.models.generator import AUDIO_FEATURE_SHAPES, Generator, GeneratorConfig
from lipsync.models.presets import (
    ModelPreset,
    build_generator,
    build_syncnet,
    count_parameters,
    generator_config,
    generator_flops_per_frame,
    model_preset,
    preset_names,
    syncnet_config,
    with_audio_backend,
)
from lipsync.models.pretrained import (
    load_audio_encoder,
    load_state,
    read_state_dict,
    read_torch_file,
    save_state,
)
from lipsync.models.syncnet import (
    SyncNet,
    SyncNetConfig,
    lower_face,
    sync_bce_loss,
    sync_similarity,
)

__all__ = [
    "AUDIO_FEATURE_SHAPES",
    "AudioEncoder",
    "Generator",
    "GeneratorConfig",
    "ModelPreset",
    "SyncNet",
    "SyncNetConfig",
    "build_generator",
    "build_syncnet",
    "count_parameters",
    "generator_config",
    "generator_flops_per_frame",
    "load_audio_encoder",
    "load_state",
    "read_state_dict",
    "read_torch_file",
    "lower_face",
    "model_preset",
    "preset_names",
    "save_state",
    "sync_bce_loss",
    "sync_similarity",
    "syncnet_config",
    "with_audio_backend",
]
