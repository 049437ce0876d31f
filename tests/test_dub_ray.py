"""Batch dubbing on a real Ray head through `ray job submit`: local storage, re-runs, S3.

One tiny, untrained character (pipeline correctness does not depend on training), built from
3 s of the real Obama clip; speech cut from real recordings to ~2 s; shard size 25 frames so
that every item has several shards. Lossless encoding (crf 0 in the catalog) makes the stitched
output comparable frame by frame with a single-process `lipsync.render.render`.
"""

from __future__ import annotations

import csv
import json
import math
import posixpath
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipsync.config import AudioConfig, GeometryConfig, PrepareConfig, RenderConfig
from lipsync.dub.manifest import read_all
from lipsync.io import media, storage

pytestmark = [pytest.mark.integration, pytest.mark.media]

REPO = Path(__file__).resolve().parents[1]
SHARD = 25
JOB_TIMEOUT_S = 240
EXIT_ITEMS_FAILED = 3
CLIPS = {  # id -> (source file, seconds): ~2 s each, not whole numbers of frames
    "radio": ("sadtalker_RD_Radio34_002.wav", 2.37),  # 59.25 -> 60 frames: shards 25, 25, 10
    "news": ("sadtalker_chinese_news.wav", 2.11),  # 52.75 -> 53 frames: shards 25, 25, 3
}
UNDERTRAINED = {"val_l1": 0.081, "val_l1_reference_copy": 0.079}  # what the untrained character records


# ---------------------------------------------------------------------------------------------
# fixtures: one character, short audio, a catalog


@pytest.fixture(scope="module")
def character(tmp_path_factory, media_dir) -> str:
    """A tiny untrained character from the first 3 s (75 frames) of the Obama clip."""
    from lipsync.bundle import save_bundle
    from lipsync.data.prepare import prepare
    from lipsync.models import build_generator, build_syncnet
    from lipsync.models.audio_encoder import AudioEncoder

    root = tmp_path_factory.mktemp("dub_character")
    source = media_dir / "edtalk_uncrop_Obama.mp4"
    media.write_wav(root / "clip.wav", media.read_audio(source)[: 3 * 16000])
    with media.VideoWriter(root / "clip.mp4", 450, 450, media.EncodeSettings(crf=12), audio=root / "clip.wav") as w:
        for i, frame in enumerate(media.iter_video_frames(source)):
            if i == 75:
                break
            w.write(frame)
    prepare(str(root / "clip.mp4"), "obama3s", str(root / "ds"), PrepareConfig())
    torch.manual_seed(0)
    out = root / "obama_tiny"
    save_bundle(str(out), name="obama3s", preset="tiny", generator=build_generator("tiny"),
                audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=AudioConfig(),
                geometry=GeometryConfig(), dataset_dir=str(root / "ds"),
                train_info={"steps": 0, **UNDERTRAINED})
    return str(out)


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory, media_dir) -> Path:
    """radio.wav, news.wav (real speech, cut) and bad.wav (not audio at all)."""
    root = tmp_path_factory.mktemp("dub_audio")
    for item_id, (name, seconds) in CLIPS.items():
        wav = media.read_audio(media_dir / name)[: int(seconds * 16000)]
        media.write_wav(root / f"{item_id}.wav", wav)
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    return root


def write_catalog(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "character", "audio", "output", "start_frame", "crf"])
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def catalog_rows(character: str, audio: dict[str, str], blocked_output: str | None = None) -> list[dict]:
    rows = [
        {"id": "radio", "character": character, "audio": audio["radio"], "crf": 0},
        {"id": "news", "character": character, "audio": audio["news"], "start_frame": 40, "crf": 0},
        {"id": "broken", "character": character, "audio": audio["bad"], "crf": 0},
    ]
    if blocked_output:  # its output cannot be published (the parent is a file): fails at stitch, keeps segments
        rows.append({"id": "blocked", "character": character, "audio": audio["radio"], "output": blocked_output,
                     "start_frame": 7, "crf": 0})
    return rows


def submit(ray_head, catalog: str, output_root: str, env: dict | None = None,
           extra: tuple[str, ...] = ()) -> tuple[int, str]:
    import servers

    args = ["python", "jobs/batch_dub.py", "--catalog", catalog, "--output-root", output_root,
            "--shard-frames", str(SHARD), "--actors", "2", "--device", "cpu", *extra]
    return servers.run_ray_job(ray_head, args, working_dir=REPO, env=env, timeout=JOB_TIMEOUT_S)


def latest_report(output_root: str) -> dict:
    reports = storage.join(output_root, "_reports")
    names = [n for n in storage.ls(reports) if n.endswith(".json")]  # not previews/
    assert names, f"no report under {reports}"
    return storage.read_json(storage.join(reports, names[-1]))


def by_id(report: dict) -> dict[str, dict]:
    return {r["id"]: r for r in report["items"]}


def files_under(local_dir: Path) -> list[Path]:
    return [p for p in local_dir.rglob("*") if p.is_file()] if local_dir.exists() else []


def expected_frames(item_id: str) -> int:
    return math.ceil(CLIPS[item_id][1] * 25)


def decode(path: Path) -> np.ndarray:
    return np.stack([f.copy() for f in media.iter_video_frames(path)])


# ---------------------------------------------------------------------------------------------
# local storage: first run, frame equality, re-run


@pytest.fixture(scope="module")
def first_run(ray_head, character, audio_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dub_local")
    out = root / "out"
    out.mkdir()
    (out / "blocker").write_text("a file where the blocked item's output directory should be")
    audio = {k: str(audio_dir / f"{k}.wav") for k in ("radio", "news", "bad")}
    catalog = write_catalog(root / "catalog.csv",  # outputs stay under the output root (the default rule)
                            catalog_rows(character, audio, blocked_output=str(out / "blocker" / "b.mp4")))
    rc, log = submit(ray_head, str(catalog), str(out), extra=("--set", "mouth_stats=true"))
    return {"rc": rc, "log": log, "out": out, "catalog": catalog, "root": root, "report": latest_report(str(out)),
            "character": character}


def test_first_run_publishes_valid_items_and_reports_failures(first_run):
    rc, log, out, report = first_run["rc"], first_run["log"], first_run["out"], first_run["report"]
    assert rc != 0, "the job must fail (exit 3) when items failed"
    assert f"exit code {EXIT_ITEMS_FAILED}" in log or "FAILED" in log, log[-3000:]
    items = by_id(report)
    assert report["counts"] == {"ok": 2, "failed": 2, "skipped": 0}, report["counts"]
    for item_id in CLIPS:
        r = items[item_id]
        assert r["status"] == "ok" and r["error"] is None
        path = out / f"{item_id}.mp4"
        assert r["output"] == str(path) and path.is_file()
        assert r["frames"] == expected_frames(item_id) == media.count_video_frames(path)
        assert r["segments_rendered"] == 3 and r["segments_reused"] == 0
        info = media.probe(path)
        assert info.has_audio and info.audio_codec == "aac" and info.fps == 25.0
        assert abs(info.duration - CLIPS[item_id][1]) <= 1 / 25 + 1024 / 16000 + 0.01
    broken = items["broken"]
    assert broken["status"] == "failed" and broken["output"] == str(out / "broken.mp4")
    assert "bad.wav" in broken["error"] and "\n" not in broken["error"]
    assert not (out / "broken.mp4").exists()
    assert items["blocked"]["status"] == "failed" and items["blocked"]["error"].startswith("stitch:")
    assert "\n" not in items["blocked"]["error"] and "Unserializable" not in items["blocked"]["error"]
    # nothing half-written is visible: only the two outputs and the bookkeeping files
    published = sorted(p.name for p in out.iterdir() if p.is_file())
    assert published == ["blocker", "news.mp4", "radio.mp4"]  # blocker: the test's own file
    # issue 10: one manifest record per finished item (no _manifest.json rewritten per stitch)
    assert sorted(p.name for p in (out / "_manifest").iterdir()) == ["news.json", "radio.json"]
    manifest = read_all(str(out))
    assert sorted(manifest) == ["news", "radio"]
    assert len(manifest["radio"]["key"]["audio_sha256"]) == 64
    # the finished items' work prefixes are gone; the blocked one's segments are kept for a re-run
    work = [p.relative_to(out / "_work") for p in files_under(out / "_work")]
    assert {p.parts[1] for p in work} == {"blocked"}
    assert sorted(p.name for p in work if p.suffix == ".mp4") == ["seg_00000.mp4", "seg_00001.mp4", "seg_00002.mp4"]
    # progress lines and the summary went to the job log
    assert "[dub] items 4/4" in log and "failed items (2)" in log
    # issue 15: the undertrained character is named once in the summary and on each of its items; each
    # published item has a preview (4 frames, painted crop beside each) that its report entry names
    warning = f"{first_run['character']} looks undertrained: held-out L1 0.081 vs 0.079 for copying the reference"
    assert " ".join(log.split()).count(f"warning: {warning}") == 1, log[-3000:]
    for item_id in CLIPS:
        assert items[item_id]["warning"].startswith(warning)
        preview = out / "_reports" / "previews" / f"{item_id}.png"
        assert items[item_id]["preview"] == str(preview)
        assert cv2.imread(str(preview)).shape == (4 * 240, 240 + 240, 3)  # 450x450 frames at 240 px + the crop
    assert items["broken"]["preview"] is None
    # issue 16: with mouth_stats, each published item reports its mouth aperture against the footage
    for item_id in CLIPS:
        mouth = items[item_id]["mouth"]
        assert mouth["dub"]["frames"] == expected_frames(item_id) and mouth["real"]["frames"] > 0
        assert mouth["std_ratio"] == pytest.approx(mouth["dub"]["std"] / mouth["real"]["std"])
    assert items["broken"]["mouth"] is None


def test_stitched_output_equals_single_process_render(first_run, character, audio_dir, tmp_path):
    from lipsync.render import render

    torch.set_num_threads(1)  # the actors run with one thread (num_cpus=1); same arithmetic here
    for item_id, start_frame in (("radio", 0), ("news", 40)):
        single = tmp_path / f"{item_id}_single.mp4"
        render(character, str(audio_dir / f"{item_id}.wav"), str(single), RenderConfig(crf=0, device="cpu"),
               start_frame=start_frame)
        dubbed, reference = decode(first_run["out"] / f"{item_id}.mp4"), decode(single)
        assert dubbed.shape == reference.shape == (expected_frames(item_id), 450, 450, 3)
        assert np.array_equal(dubbed, reference), f"{item_id}: stitched shards differ from one render"


def test_rerun_skips_finished_items_and_reuses_segments(first_run, ray_head):
    out = first_run["out"]
    before = {name: (out / f"{name}.mp4").stat().st_mtime_ns for name in CLIPS}
    (out / "blocker").unlink()  # the blocked item can publish now
    rc, log = submit(ray_head, str(first_run["catalog"]), str(out))
    report = latest_report(str(out))
    assert report["run"]["started_at"] != first_run["report"]["run"]["started_at"]  # a new report
    items = by_id(report)
    assert rc != 0  # "broken" still fails
    assert report["counts"] == {"ok": 1, "failed": 1, "skipped": 2}, report["counts"]
    for name in CLIPS:
        assert items[name]["status"] == "skipped" and items[name]["segments_rendered"] == 0
        assert (out / f"{name}.mp4").stat().st_mtime_ns == before[name]  # not rewritten
    blocked = items["blocked"]
    assert blocked["status"] == "ok", blocked
    assert (blocked["segments_reused"], blocked["segments_rendered"]) == (3, 0)  # nothing rendered again
    assert media.count_video_frames(out / "blocker" / "b.mp4") == expected_frames("radio")
    assert sum(r["segments_rendered"] for r in report["items"]) == 0
    assert files_under(out / "_work") == []  # every finished item cleaned its work prefix
    assert "broken" in log


# ---------------------------------------------------------------------------------------------
# everything on S3


def test_s3_catalog_bundle_audio_and_outputs(ray_head, s3_server, s3_tmp, character, audio_dir, tmp_path):
    bundle = storage.join(s3_tmp, "characters", "obama_tiny")
    storage.upload_dir(character, bundle)
    for name in ("radio", "news", "bad"):
        storage.write_bytes(storage.join(s3_tmp, "audio", f"{name}.wav"), (audio_dir / f"{name}.wav").read_bytes())
    # relative paths: resolved against the catalog's own prefix
    rows = catalog_rows("characters/obama_tiny", {k: f"audio/{k}.wav" for k in ("radio", "news", "bad")})
    catalog = storage.join(s3_tmp, "catalog.jsonl")
    storage.write_text(catalog, "".join(json.dumps(r) + "\n" for r in rows))
    out = storage.join(s3_tmp, "out")

    rc, log = submit(ray_head, catalog, out, env=s3_server.env())

    assert rc != 0 and "failed items (1)" in log, log[-3000:]
    report = latest_report(out)
    assert report["counts"] == {"ok": 2, "failed": 1, "skipped": 0}, report["counts"]
    items = by_id(report)
    assert "audio/bad.wav" in items["broken"]["error"]
    for name in CLIPS:
        assert items[name]["output"] == storage.join(out, f"{name}.mp4")
        with storage.local_copy(items[name]["output"]) as local:
            assert media.count_video_frames(local) == expected_frames(name)
            assert media.probe(local).has_audio
    # only finished outputs and bookkeeping are left: no work files, no temp keys (SeaweedFS keeps
    # empty directory entries after deletes, so files are listed, not names)
    fs, root = storage.filesystem(out)
    files = sorted(posixpath.relpath(f, root) for f in fs.find(root))
    assert [f for f in files if not f.startswith("_reports/")] == \
        ["_manifest/news.json", "_manifest/radio.json", "news.mp4", "radio.mp4"], files  # issue 10: per-item records
    assert len([f for f in files if f.startswith("_reports/") and f.endswith(".json")]) == 1
    assert sorted(f for f in files if f.startswith("_reports/previews/")) == \
        ["_reports/previews/news.png", "_reports/previews/radio.png"]
