"""Dub catalog parsing and validation, shard planning, run settings (pure logic, no Ray)."""

from __future__ import annotations

import json

import pytest

from lipsync.config import RenderConfig
from lipsync.config import ConfigError, DubConfig, load_config
from lipsync.dub import dub_flags, parse_actors
from lipsync.dub.catalog import CatalogItem, parse_catalog, read_catalog, unsafe_id_reason
from lipsync.dub.plan import LruCache, input_key, plan_shards, run_key, split_frames
from lipsync.dub.report import ItemResult, build_report
from lipsync.errors import InputError

ROOT = "s3://bucket/out"
CSV_HEADER = "id,character,audio,output,start_frame,crf\n"


def csv_catalog(*rows: str, header: str = CSV_HEADER) -> str:
    return header + "".join(r + "\n" for r in rows)


def parse_csv(text: str, source: str = "s3://bucket/cats/cat.csv", **options) -> list[CatalogItem]:
    return parse_catalog(text, "csv", source, ROOT, **options)


def expect_error(text: str, fmt: str = "csv") -> str:
    with pytest.raises(InputError) as e:
        parse_catalog(text, fmt, "s3://bucket/cats/cat.csv", ROOT)
    assert e.value.path == "s3://bucket/cats/cat.csv"
    assert "\n" not in str(e.value)
    return e.value.problem


# ---------------------------------------------------------------------------------------------
# parsing and defaults


def test_csv_rows_with_defaults_and_explicit_values():
    items = parse_csv(csv_catalog(
        "a,s3://b/char,s3://b/a.wav,,,",
        "b,s3://b/char,s3://b/b.mp3,s3://other/x/b.mp4,100,0",
    ), allow_outputs_outside_root=True)  # an output outside the root needs the setting
    assert [i.id for i in items] == ["a", "b"]
    a, b = items
    assert a.output == "s3://bucket/out/a.mp4"  # default <output_root>/<id>.mp4
    assert (a.start_frame, a.crf, a.row) == (0, None, 1)
    assert b.output == "s3://other/x/b.mp4"
    assert (b.start_frame, b.crf, b.row) == (100, 0, 2)
    assert b.audio == "s3://b/b.mp3"


def test_csv_optional_columns_may_be_absent_and_blank_lines_are_ignored():
    items = parse_csv("id,character,audio\n x , s3://b/c , s3://b/x.wav \n\n y,s3://b/c,s3://b/y.wav\n")
    assert [(i.id, i.character, i.audio) for i in items] == [("x", "s3://b/c", "s3://b/x.wav"),
                                                             ("y", "s3://b/c", "s3://b/y.wav")]
    assert items[1].row == 2  # blank lines are not rows


def test_relative_inputs_resolve_against_the_catalog_dir_and_outputs_against_the_root():
    (item,) = parse_csv(csv_catalog("a,../chars/obama,audio/a.wav,season1/a.mp4,,"))
    assert item.character == "s3://bucket/chars/obama"
    assert item.audio == "s3://bucket/cats/audio/a.wav"
    assert item.output == "s3://bucket/out/season1/a.mp4"


def test_local_relative_paths(tmp_path):
    cat = tmp_path / "cat.csv"
    cat.write_text(csv_catalog("a,chars/obama,/abs/a.wav,,,"))
    (item,) = read_catalog(str(cat), str(tmp_path / "out"))
    assert item.character == str(tmp_path / "chars" / "obama")
    assert item.audio == "/abs/a.wav"
    assert item.output == str(tmp_path / "out" / "a.mp4")


def test_jsonl_rows(tmp_path):
    cat = tmp_path / "cat.jsonl"
    cat.write_text(json.dumps({"id": "a", "character": "s3://b/c", "audio": "s3://b/a.wav"}) + "\n\n"
                   + json.dumps({"id": "b", "character": "s3://b/c", "audio": "s3://b/b.wav", "crf": 18,
                                 "start_frame": "7", "output": "s3://bucket/out/o/b.mp4"}) + "\n")
    a, b = read_catalog(str(cat), ROOT)
    assert (a.id, a.output, a.crf, a.row) == ("a", "s3://bucket/out/a.mp4", None, 1)
    assert (b.id, b.output, b.crf, b.start_frame, b.row) == ("b", "s3://bucket/out/o/b.mp4", 18, 7, 2)


def test_format_from_extension_and_missing_file(tmp_path):
    bad = tmp_path / "cat.txt"
    bad.write_text(csv_catalog("a,c,x.wav,,,"))
    with pytest.raises(InputError, match="use .csv or .jsonl"):
        read_catalog(str(bad), ROOT)
    with pytest.raises(InputError, match="catalog not found"):
        read_catalog(str(tmp_path / "nope.csv"), ROOT)


# ---------------------------------------------------------------------------------------------
# validation, each with its row number


def test_duplicate_id_names_both_rows():
    problem = expect_error(csv_catalog("x,c,a.wav,,,", "y,c,b.wav,,,", "x,c,c.wav,,,"))
    assert problem == "row 3: duplicate id 'x' (first on row 1)"


def test_duplicate_output_names_the_other_row():
    problem = expect_error(csv_catalog("x,c,a.wav,s3://b/o.mp4,,", "y,c,b.wav,s3://b/./o.mp4,,"))
    assert problem.startswith("row 2: duplicate output 's3://b/./o.mp4'")
    assert "row 1" in problem and "'x'" in problem


def test_explicit_output_colliding_with_a_default_output():
    problem = expect_error(csv_catalog("x,c,a.wav,,,", f"y,c,b.wav,{ROOT}/x.mp4,,"))
    assert problem.startswith("row 2: duplicate output")


def test_missing_required_column_in_header():
    problem = expect_error("id,character,output\nx,c,o.mp4\n")
    assert problem.startswith("header: missing column(s) 'audio'")


def test_unknown_column_is_rejected():
    assert "unknown column(s) 'crf_typo'" in expect_error("id,character,audio,crf_typo\nx,c,a.wav,3\n")


def test_missing_and_empty_required_values():
    assert expect_error(csv_catalog("x,c,a.wav,,,", "y,c,,,,")) == "row 2: empty 'audio'"
    problem = expect_error('{"id": "x", "character": "c"}\n', "jsonl")
    assert problem == "row 1: missing column(s) 'audio'"


@pytest.mark.parametrize("bad_id, reason", [
    ("a/b", "path separator"), ("a\\\\b", "path separator"), ("..", "'..'"), ("a..b", "'..'"),
    (".hidden", "not starting with '.'"), ("with space", "letters, digits"), ("-x", "not starting"),
])
def test_unsafe_ids_are_rejected_with_row_number(bad_id, reason):
    text = json.dumps({"id": "ok", "character": "c", "audio": "a.wav"}) + "\n" + \
        json.dumps({"id": bad_id.replace("\\\\", "\\"), "character": "c", "audio": "b.wav"}) + "\n"
    problem = expect_error(text, "jsonl")
    assert problem.startswith("row 2: unsafe id"), problem
    assert reason in problem


def test_empty_id_cell_and_safe_ids():
    assert expect_error(csv_catalog(",c,a.wav,,,")) == "row 1: empty 'id'"
    assert unsafe_id_reason("") == "empty"
    for ok in ("ep_01", "ÉPISODE-2.fr", "a.b-c_d", "007"):
        assert unsafe_id_reason(ok) is None, ok


@pytest.mark.parametrize("cells, problem", [
    ("-1,", "row 1: start_frame must be >= 0, got -1"),
    ("1.5,", "row 1: start_frame must be an integer, got '1.5'"),
    (",52", "row 1: crf must be in [0, 51], got 52"),
    (",hi", "row 1: crf must be an integer, got 'hi'"),
])
def test_bad_numbers(cells, problem):
    assert expect_error(csv_catalog(f"x,c,a.wav,,{cells}")) == problem


def test_output_must_be_mp4_and_rows_must_fit_the_header():
    assert expect_error(csv_catalog("x,c,a.wav,s3://b/x.mov,,")) == "row 1: output 's3://b/x.mov' must end with .mp4"
    assert "3 columns" in expect_error("id,character,audio\nx,c,a.wav,extra\n")


def test_empty_catalog_and_bad_jsonl():
    assert expect_error("id,character,audio\n") == "catalog has no rows"
    assert expect_error("", "csv") == "catalog is empty (no header line)"
    assert expect_error('{"id": "x"\n', "jsonl").startswith("row 1: not valid JSON")
    assert expect_error('["x"]\n', "jsonl") == "row 1: expected a JSON object, got list"


# ---------------------------------------------------------------------------------------------
# shards


@pytest.mark.parametrize("n, size", [(1, 250), (250, 250), (251, 250), (62, 25), (75, 25), (1000, 7)])
def test_shards_cover_every_frame_once_in_order(n, size):
    ranges = split_frames(n, size)
    covered = [k for a, b in ranges for k in range(a, b)]
    assert covered == list(range(n))  # exactly once, in order
    assert all(b - a == size for a, b in ranges[:-1])  # full shards ...
    assert 1 <= ranges[-1][1] - ranges[-1][0] <= size  # ... and a last one that may be short
    assert len(ranges) == -(-n // size)


def test_shard_boundaries_and_indices():
    shards = plan_shards("ep1", 62, 25)
    assert [(s.index, s.frame_start, s.frame_end, s.frames) for s in shards] == [
        (0, 0, 25, 25), (1, 25, 50, 25), (2, 50, 62, 12)]
    assert {s.item_id for s in shards} == {"ep1"}
    assert split_frames(0, 25) == []
    with pytest.raises(ValueError):
        split_frames(10, 0)


# ---------------------------------------------------------------------------------------------
# keys, settings, caches, report


def test_input_key_changes_with_what_changes_pixels():
    item = CatalogItem("a", "c", "a.wav", "s3://b/a.mp4")
    base = input_key(item, "sha", "v1", RenderConfig())
    assert input_key(item, "sha", "v1", RenderConfig()) == base
    assert input_key(item, "sha2", "v1", RenderConfig()) != base
    assert input_key(item, "sha", "v2", RenderConfig()) != base
    assert input_key(item, "sha", "v1", RenderConfig(crf=0)) != base
    assert input_key(CatalogItem("a", "c", "a.wav", "s3://b/a.mp4", crf=0), "sha", "v1", RenderConfig()) != base
    assert input_key(CatalogItem("a", "c", "a.wav", "s3://b/a.mp4", start_frame=3), "sha", "v1",
                     RenderConfig()) != base
    assert input_key(item, "sha", "v1", RenderConfig(batch_size=8)) == base  # speed knobs do not count


def test_run_key_depends_on_shard_size_only_among_dub_settings():
    cfg = load_config(DubConfig)
    assert run_key(cfg) == run_key(load_config(DubConfig, overrides=["actors=4", "device=cpu"]))
    assert run_key(cfg) != run_key(load_config(DubConfig, overrides=["shard_frames=25"]))


def test_config_defaults_options_and_validation():
    cfg = load_config(DubConfig)
    assert cfg.shard_frames == 250 and cfg.actors == 1
    assert cfg.render.crf == RenderConfig().crf  # render defaults come from configs/render.yaml
    cfg = load_config(DubConfig, overrides=["shard_frames=25"], flags=dub_flags(actors="1:4", crf=0, device="cpu"))
    assert (cfg.shard_frames, cfg.actors, cfg.max_actors, cfg.render.crf, cfg.device) == (25, 1, 4, 0, "cpu")
    assert parse_actors("3") == {"actors": 3, "max_actors": 0}
    for bad in ("0", "4:2", "x", "1:y"):
        with pytest.raises(ConfigError, match="--actors"):
            parse_actors(bad)
    with pytest.raises(ConfigError, match="config shard_frames: Input should be greater than or equal to 1"):
        load_config(DubConfig, flags={"shard_frames": 0})
    with pytest.raises(ConfigError, match="config device: String should match pattern"):
        load_config(DubConfig, flags={"device": "tpu"})
    with pytest.raises(ConfigError, match="unknown config key 'shard_frame'.*did you mean 'shard_frames'"):
        load_config(DubConfig, overrides=["shard_frame=3"])


def test_lru_cache_loads_once_and_evicts_the_least_recently_used():
    cache = LruCache(lambda uri: object(), capacity=2)
    a = cache.get("a")
    cache.get("b")
    assert cache.get("a") is a and cache.loads == 2
    cache.get("c")  # evicts b (a was used more recently)
    assert cache.get("a") is a and cache.loads == 3
    cache.get("b")
    assert cache.loads == 4


def test_report_counts_and_order():
    items = [ItemResult("b", "failed", "o/b.mp4", error="bad audio", row=2),
             ItemResult("a", "ok", "o/a.mp4", frames=50, row=1),
             ItemResult("c", "skipped", "o/c.mp4", frames=10, row=3)]
    report = build_report(items=items, run={}, timings={"total_s": 10.0})
    assert report["counts"] == {"ok": 1, "failed": 1, "skipped": 1}
    assert report["frames_rendered"] == 50 and report["frames_per_second"] == 5.0
    assert [r["id"] for r in report["items"]] == ["a", "b", "c"]
    assert report["items"][1]["error"] == "bad audio"
    with pytest.raises(ValueError):
        ItemResult("x", "done", "o")


def test_summary_lists_failures_with_reasons():
    from rich.console import Console

    from lipsync.dub.report import summary

    items = [ItemResult("a", "ok", "o/a.mp4", frames=50, row=1),
             ItemResult("b", "failed", "o/b.mp4", error="o/b.wav: not a media file", row=2)]
    report = build_report(items=items, run={}, timings={"plan_s": 1.0, "render_s": 8.0, "stitch_s": 0.2,
                                                        "total_s": 10.0})
    console = Console(record=True, width=120)
    console.print(summary(report, "o/_reports/r.json"))
    text = console.export_text()
    assert "1 ok" in text and "1 failed" in text and "0 skipped" in text
    assert "failed items (1)" in text and "o/b.wav: not a media file" in text
    assert "render" in text and "80%" in text  # stage share of the wall time
    assert "o/_reports/r.json" in text


def test_cli_rejects_a_bad_catalog_with_exit_code_2_before_starting_ray(tmp_path):
    from typer.testing import CliRunner

    from lipsync_cli.main import app

    cat = tmp_path / "cat.csv"
    cat.write_text(csv_catalog("x,c,a.wav,,,", "x,c,b.wav,,,"))
    result = CliRunner().invoke(app, ["dub", str(cat), "--output-root", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "row 2: duplicate id 'x' (first on row 1)" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()  # nothing ran
    bad_option = CliRunner().invoke(app, ["dub", str(cat), "--output-root", "o", "--actors", "3:1"])
    assert bad_option.exit_code == 2 and "--actors" in bad_option.output


@pytest.mark.media
def test_the_quick_start_catalog_names_the_shared_clips_relative_to_itself(media_dir, tmp_path):
    """README's `lipsync dub examples/quickstart_catalog.csv`: its audio resolves to ../shared/media
    from the catalog's own directory, wherever the command runs; outputs land under the root."""
    from pathlib import Path

    catalog = Path(__file__).resolve().parents[1] / "examples" / "quickstart_catalog.csv"
    items = read_catalog(str(catalog), str(tmp_path / "dubs"))
    assert [i.id for i in items] == ["radio34", "news"]
    assert all(Path(i.audio).resolve().parent == media_dir.resolve() and Path(i.audio).exists() for i in items)
    assert items[1].output == str(tmp_path / "dubs" / "news" / "obama_news.mp4")
    assert items[0].output.startswith(str(tmp_path / "dubs")) and items[0].output.endswith(".mp4")
