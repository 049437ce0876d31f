"""Models: shapes, sizes, presets, SyncNet maths, and weight files (pretrained + safetensors)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lipsync import config as config_io
from lipsync.config import CONFIG_DIR
from lipsync.errors import InputError
from lipsync.models import (
    AudioEncoder,
    Generator,
    GeneratorConfig,
    ModelPreset,
    SyncNet,
    build_generator,
    build_syncnet,
    count_parameters,
    generator_config,
    generator_flops_per_frame,
    load_audio_encoder,
    load_state,
    lower_face,
    model_preset,
    preset_names,
    save_state,
    sync_bce_loss,
    sync_similarity,
    syncnet_config,
    with_audio_backend,
)
from lipsync.models.generator import AUDIO_FEATURE_SHAPES, audio_reduction_plan

SYNCTALK_PARAMS = 12_190_000
SYNCTALK_GFLOPS = 9.77  # per frame at 320 px (4.89 GMAC), measured on SyncTalk_2D's UNet


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one torch thread (conftest.one_torch_thread)."""


def _inputs(config: GeneratorConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, config.in_channels, config.size, config.size, generator=g)
    audio = torch.randn(n, *config.audio_shape, generator=g)
    return x, audio


def _randomise_batchnorm(module: torch.nn.Module, seed: int = 3) -> None:
    """Give BatchNorm statistics non-default values so that loading them (or not) shows in outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# --- generator -------------------------------------------------------------------------------------


def test_st2d_328_has_synctalk_parameter_count():
    n = count_parameters(build_generator("st2d-328"))
    assert abs(n - SYNCTALK_PARAMS) <= 0.02 * SYNCTALK_PARAMS, n


@torch.no_grad()
def test_st2d_328_maps_320_crop_and_audio_to_320_image_in_unit_range():
    model = build_generator("st2d-328").eval()
    x, audio = _inputs(model.config, 1)
    assert x.shape == (1, 6, 320, 320) and audio.shape == (1, 32, 16, 16)
    out = model(x, audio)
    assert out.shape == (1, 3, 320, 320)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


@torch.no_grad()
@pytest.mark.parametrize(("preset", "n", "size"), [("st2d-160", 2, 160), ("tiny", 3, 128)])
def test_generator_presets_map_n_inputs_to_n_images(preset, n, size):
    model = build_generator(preset).eval()
    x, audio = _inputs(model.config, n)
    out = model(x, audio)
    assert out.shape == (n, 3, size, size)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_generator_output_depends_on_audio():
    torch.manual_seed(0)
    model = build_generator("tiny").train()  # batch statistics: an untrained net in eval mode is nearly flat
    x, audio = _inputs(model.config, 2)
    with torch.no_grad():
        a = model(x, audio)
        b = model(x, audio.flip(0))  # same batch statistics, audio swapped between the two samples
    assert (a - b).abs().max() > 0.05


@torch.no_grad()
@pytest.mark.parametrize("backend", sorted(AUDIO_FEATURE_SHAPES))
def test_generator_accepts_each_audio_backend_shape(backend):
    config = generator_config("tiny", audio_backend=backend)
    assert config.audio_shape == AUDIO_FEATURE_SHAPES[backend]
    model = Generator(config).eval()
    x, audio = _inputs(config, 2)
    assert model(x, audio).shape == (2, 3, 128, 128)


@pytest.mark.parametrize("size", [128, 160, 320])
@pytest.mark.parametrize("audio_hw", [(16, 16), (32, 32), (16, 32)])
def test_audio_reduction_plan_lands_on_the_bottleneck(size, audio_hw):
    target = GeneratorConfig(size=size).bottleneck_size
    h, w = audio_hw
    for (sh, sw), (ph, pw) in audio_reduction_plan(audio_hw, target):
        h, w = (h + 2 * ph - 3) // sh + 1, (w + 2 * pw - 3) // sw + 1
    assert (h, w) == (target, target)


def test_generator_rejects_wrong_audio_shape():
    model = build_generator("tiny")
    x, _ = _inputs(model.config, 1)
    with pytest.raises(ValueError, match="audio"):
        model(x, torch.zeros(1, 256, 16, 32))


def test_st2d_328_flops_match_synctalk():
    gflops = generator_flops_per_frame("st2d-328") / 1e9
    assert abs(gflops - SYNCTALK_GFLOPS) <= 0.02 * SYNCTALK_GFLOPS, gflops


def test_tiny_is_much_cheaper_than_st2d():
    tiny_flops = generator_flops_per_frame("tiny")
    assert tiny_flops < 0.5e9, tiny_flops  # about 1/75 of st2d-328: CPU training in minutes
    assert count_parameters(build_generator("tiny")) < 2_000_000


def test_building_with_the_same_seed_gives_identical_weights():
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_generator("tiny").state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- presets ---------------------------------------------------------------------------------------


def test_presets_carry_crop_margin_and_syncnet():
    assert set(preset_names()) == {"tiny", "st2d-160", "st2d-328"}
    for name in preset_names():
        preset = model_preset(name)
        assert preset.crop_margin == 4
        assert preset.crop_size == preset.size + 8
        assert syncnet_config(name) == preset.syncnet
    assert model_preset("st2d-328").crop_size == 328


def test_preset_survives_a_dict_round_trip():
    """Bundles store the preset as plain YAML/JSON and rebuild the architecture from it."""
    for name in preset_names():
        preset = model_preset(name)
        assert config_io.from_dict(ModelPreset, config_io.to_dict(preset)) == preset


def test_unknown_preset_raises_input_error_listing_choices():
    with pytest.raises(InputError) as info:
        build_generator("huge")
    assert info.value.path is None
    assert "unknown preset 'huge'" in str(info.value)
    assert "st2d-328" in str(info.value) and "tiny" in str(info.value)


def test_unknown_audio_backend_raises_input_error():
    with pytest.raises(InputError, match="unknown audio backend 'mfcc'"):
        with_audio_backend(generator_config("tiny"), "mfcc")


def test_models_yaml_header_names_its_command():
    first = (CONFIG_DIR / "models.yaml").read_text().splitlines()[0]
    assert first.startswith("# Used by: lipsync ")


# --- audio encoder ---------------------------------------------------------------------------------


@torch.no_grad()
def test_audio_encoder_maps_mel_windows_to_512_values():
    enc = AudioEncoder().eval()
    out = enc(torch.randn(5, 1, 80, 16))
    assert out.shape == (5, 512)
    assert out.min() >= 0.0  # the last block ends in ReLU


def test_audio_encoder_parameter_names_follow_synctalk_file():
    state = AudioEncoder().state_dict()
    assert state["audio_encoder.0.conv_block.0.weight"].shape == (32, 1, 3, 3)
    assert state["audio_encoder.0.conv_block.0.bias"].shape == (32,)
    assert state["audio_encoder.0.conv_block.1.running_mean"].shape == (32,)
    assert state["audio_encoder.12.conv_block.0.weight"].shape == (512, 512, 1, 1)
    assert len([k for k in state if k.endswith("conv_block.0.weight")]) == 13


# --- syncnet ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_syncnet_embeddings_are_unit_non_negative_and_similarity_in_unit_range():
    torch.manual_seed(0)
    net = build_syncnet("tiny").eval()
    h, w = net.config.face_size
    face_emb, audio_emb = net(torch.rand(4, 3, h, w), torch.randn(4, 1, 80, 16))
    assert face_emb.shape == (4, 512) and audio_emb.shape == (4, 512)
    assert face_emb.min() >= 0 and audio_emb.min() >= 0
    torch.testing.assert_close(face_emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(audio_emb.norm(dim=1), torch.ones(4))
    sim = sync_similarity(face_emb, audio_emb)
    assert sim.shape == (4,)
    assert sim.min() >= 0.0 and sim.max() <= 1.0


def test_syncnet_rejects_a_face_of_the_wrong_size():
    net = build_syncnet("tiny")
    with pytest.raises(ValueError, match="lower_face"):
        net(torch.rand(1, 3, 50, 50), torch.randn(1, 1, 80, 16))


def test_syncnet_presets_have_sensible_face_sizes():
    for name in preset_names():
        h, w = syncnet_config(name).face_size
        assert w == 2 * h  # the lower half of a square crop
        assert h <= model_preset(name).size // 2


def test_lower_face_takes_the_lower_half_and_passes_gradients():
    crop = torch.rand(2, 3, 128, 128, requires_grad=True)
    face = lower_face(crop, (64, 128))
    assert face.shape == (2, 3, 64, 128)
    torch.testing.assert_close(face, crop[:, :, 64:, :])  # same size: no resampling
    small = lower_face(crop, (32, 64))
    assert small.shape == (2, 3, 32, 64)
    small.sum().backward()
    assert crop.grad[:, :, :64].abs().sum() == 0
    assert crop.grad[:, :, 64:].abs().sum() > 0


def test_sync_bce_loss_prefers_matching_similarities_and_stays_finite():
    label = torch.tensor([1.0, 0.0])
    good = sync_bce_loss(torch.tensor([0.9, 0.1]), label)
    bad = sync_bce_loss(torch.tensor([0.1, 0.9]), label)
    assert good < bad
    torch.testing.assert_close(good, -torch.log(torch.tensor(0.9)))
    extreme = sync_bce_loss(torch.tensor([0.0, 1.0]), label.view(2, 1))
    assert torch.isfinite(extreme) and extreme > 10


def test_sync_loss_trains_the_syncnet_apart_on_two_pairs():
    """A few steps on one positive and one negative pair must separate their similarities."""
    torch.manual_seed(0)
    net = build_syncnet("tiny").train()
    h, w = net.config.face_size
    face = torch.rand(2, 3, h, w)
    mel = torch.randn(2, 1, 80, 16)
    label = torch.tensor([1.0, 0.0])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        loss = sync_bce_loss(sync_similarity(*net(face, mel)), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.train()  # batch statistics, as seen during the steps
    with torch.no_grad():
        sim = sync_similarity(*net(face, mel))
    assert sim[0] > sim[1]


# --- weight files ----------------------------------------------------------------------------------


def _trained_looking_encoder() -> AudioEncoder:
    torch.manual_seed(7)
    enc = AudioEncoder()
    _randomise_batchnorm(enc)
    return enc.eval()


@pytest.mark.parametrize("style", ["synctalk", "prefixed", "ddp", "syncnet"])
def test_load_audio_encoder_accepts_synctalk_style_files(tmp_path, style):
    enc = _trained_looking_encoder()
    state = enc.state_dict()
    if style == "synctalk":  # audio_visual_encoder.pth: keys without the Sequential's name
        state = {k.removeprefix("audio_encoder."): v for k, v in state.items()}
    elif style == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    elif style == "syncnet":  # a whole SyncNet state dict: only its audio tower is taken
        net = build_syncnet("tiny")
        net.audio_encoder.load_state_dict(state)
        state = net.state_dict()
    path = tmp_path / "audio_visual_encoder.pth"
    torch.save(state, path)

    loaded = load_audio_encoder(path)
    mel = torch.randn(3, 1, 80, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mel), enc(mel), rtol=0, atol=0)
    assert not loaded.training


def test_load_audio_encoder_tolerates_missing_batchnorm_counters(tmp_path):
    enc = _trained_looking_encoder()
    state = {k: v for k, v in enc.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "enc.pth"
    torch.save(state, path)
    mel = torch.randn(2, 1, 80, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_audio_encoder(path)(mel), enc(mel))


def test_load_audio_encoder_names_file_and_shape_mismatch(tmp_path):
    state = AudioEncoder().state_dict()
    state["audio_encoder.3.conv_block.0.weight"] = torch.zeros(64, 32, 5, 5)
    path = tmp_path / "wrong_shape.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as info:
        load_audio_encoder(path)
    assert info.value.path == str(path)
    assert "shape mismatch" in str(info.value) and "audio_encoder.3.conv_block.0.weight" in str(info.value)


def test_load_audio_encoder_names_file_and_missing_key(tmp_path):
    state = AudioEncoder().state_dict()
    del state["audio_encoder.5.conv_block.1.running_var"]
    path = tmp_path / "missing_key.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as info:
        load_audio_encoder(path)
    assert info.value.path == str(path)
    assert "missing key audio_encoder.5.conv_block.1.running_var" in str(info.value)


def test_load_audio_encoder_rejects_missing_and_non_torch_files(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError) as info:
        load_audio_encoder(missing)
    assert info.value.path == str(missing) and "not found" in str(info.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(InputError) as info:
        load_audio_encoder(garbage)
    assert info.value.path == str(garbage)


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_generator("tiny").eval()
    _randomise_batchnorm(model)
    path = tmp_path / "weights" / "generator.safetensors"
    save_state(model, path, metadata={"preset": "tiny"})
    assert path.is_file() and list(path.parent.iterdir()) == [path]  # no temp files left

    torch.manual_seed(1)
    fresh = build_generator("tiny").eval()
    x, audio = _inputs(model.config, 2)
    with torch.no_grad():
        assert not torch.allclose(fresh(x, audio), model(x, audio))
        metadata = load_state(fresh, path)
        torch.testing.assert_close(fresh(x, audio), model(x, audio), rtol=0, atol=0)
    assert metadata == {"preset": "tiny"}


def test_load_state_rejects_weights_of_another_architecture(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_state(build_generator("tiny"), path)
    wider = Generator(dataclasses.replace(generator_config("tiny"), widths=(16, 32, 64, 128, 256)))
    with pytest.raises(InputError) as info:
        load_state(wider, path)
    assert info.value.path == str(path) and "shape mismatch" in str(info.value)
    with pytest.raises(InputError, match="missing key"):
        load_state(SyncNet(syncnet_config("tiny")), path)
    with pytest.raises(InputError, match="not found"):
        load_state(wider, tmp_path / "absent.safetensors")
