"""The one config loader: YAML -> --set -> flags, validated before any work (issue: one owner per concern)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lipsync.config import (
    CONFIG_DIR,
    CONFIG_FILES,
    ConfigError,
    DubConfig,
    EvalConfig,
    PrepareConfig,
    RenderConfig,
    TrainConfig,
    load_config,
    parse_overrides,
    to_dict,
)
from lipsync_cli.main import app

runner = CliRunner()


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("cls", list(CONFIG_FILES))
def test_yaml_files_and_dataclass_defaults_agree(cls):
    """Library callers that pass no config get what the tools run with (configs/*.yaml)."""
    from_yaml = _flatten(yaml.safe_load((CONFIG_DIR / f"{CONFIG_FILES[cls]}.yaml").read_text()) or {})
    defaults = _flatten(to_dict(cls()))
    for key, value in from_yaml.items():
        if value == {}:
            continue
        assert key in defaults, f"{CONFIG_FILES[cls]}.yaml: {key} is not a field"
        assert defaults[key] == pytest.approx(value) if isinstance(value, float) else defaults[key] == value, key
    assert load_config(cls) == cls()


def test_order_yaml_then_set_then_flags(tmp_path):
    path = tmp_path / "render.yaml"
    path.write_text("crf: 30\nbatch_size: 4\n")
    cfg = load_config(RenderConfig, path, ["crf=25", "queue_depth=7"], {"crf": 10, "device": None})
    assert (cfg.crf, cfg.batch_size, cfg.queue_depth, cfg.device) == (10, 4, 7, "auto")
    dub = load_config(DubConfig, None, ["render.crf=18"], {"render": {"crf": None}, "shard_frames": 50})
    assert (dub.render.crf, dub.shard_frames, dub.render.x264_preset) == (18, 50, "veryfast")  # render.yaml base
    assert load_config(TrainConfig, None, ["lr=1e-4"]).lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


@pytest.mark.parametrize("cls, override, message", [
    (RenderConfig, "crf=abc", "config crf: Input should be a valid integer, unable to parse string as an integer"),
    (RenderConfig, "crf=99", "config crf: Input should be less than or equal to 51 (got 99)"),
    (DubConfig, "render.batch_size=0", "config render.batch_size: Input should be greater than or equal to 1"),
    (DubConfig, "actor_cpus=-1", "config actor_cpus: Input should be greater than 0 (got -1)"),
    (DubConfig, "shard_frame=3", "unknown config key 'shard_frame' for DubConfig; did you mean 'shard_frames'?"),
    (DubConfig, "crf=20", "unknown config key 'crf' for DubConfig; did you mean 'render.crf'?"),
    (DubConfig, "render=3", "config key render must be a mapping of RenderConfig keys"),
    (TrainConfig, "device=tpu", "config device: String should match pattern"),
    (TrainConfig, "syncnet_batch_size=7", "syncnet_batch_size must be even"),
    (TrainConfig, "negatives.max_shift=2", "min_shift <= max_shift"),
    (EvalConfig, "held_out_fraction=1.5", "config held_out_fraction"),
    (PrepareConfig, "geometry.crop_margin=4", "unknown config key 'geometry.crop_margin'"),
])
def test_bad_values_are_one_line_config_errors(cls, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(cls, None, [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_override_syntax_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_overrides(["crf"])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(RenderConfig, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(RenderConfig, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("crf: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(RenderConfig, tmp_path / "broken.yaml")


@pytest.mark.parametrize("command", [
    ["render", "--character", "{tmp}/nobody", "--audio", "{tmp}/none.wav", "-o", "{tmp}/out.mp4"],
    ["dub", "{tmp}/catalog.csv", "--output-root", "{tmp}/out.mp4"],
    ["train", "--dataset", "{tmp}/ds", "--out", "{tmp}/out.mp4", "--preset", "tiny"],
    ["prepare", "{tmp}/v.mp4", "--name", "x", "--out", "{tmp}/out.mp4"],
    ["eval", "--dataset", "{tmp}/ds", "--character", "{tmp}/c", "--json", "{tmp}/out.mp4"],
])
@pytest.mark.parametrize("override, words", [
    ("batch_sise=2", "did you mean"),  # an unknown key (a typo of a key some command has, or none)
    ("device=7", "config device"),  # a wrong type
])
def test_cli_config_errors_exit_2_before_any_work(tmp_path, command, override, words):
    args = [a.format(tmp=tmp_path) for a in command]
    result = runner.invoke(app, [*args, "--set", override])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and (words in text or "unknown config key" in text), text
    assert not (tmp_path / "out.mp4").exists()  # nothing ran, nothing was written
    assert list(tmp_path.iterdir()) == []


def test_cli_flag_values_are_validated_like_config_values(tmp_path):
    result = runner.invoke(app, ["render", "--character", str(tmp_path / "c"), "--audio", str(tmp_path / "a.wav"),
                                 "-o", str(tmp_path / "o.mp4"), "--crf", "99"])
    assert result.exit_code == 2 and "config crf: Input should be less than or equal to 51" in result.output
    result = runner.invoke(app, ["dub", str(tmp_path / "c.csv"), "--output-root", str(tmp_path / "o"),
                                 "--actors", "3:1"])
    assert result.exit_code == 2 and "--actors" in result.output


def test_config_classes_live_in_one_module():
    """Run configs are defined in lipsync.config only (architectures stay with the models)."""
    import lipsync.config as C

    for cls in (*CONFIG_FILES, C.AudioConfig, C.GeometryConfig, C.LossWeights, C.NegativeSampling):
        assert dataclasses.is_dataclass(cls) and cls.__module__ == "lipsync.config"
    assert not Path(C.__file__).with_name("device.py").exists()
