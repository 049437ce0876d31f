"""Issue 11, items 1-5 and 9: nothing lost, nobody in.

Outputs never replace inputs or files this job did not write; duplicate outputs are found
whatever their spelling; a re-run skips only outputs that still are what it published; a failed
stitch keeps its segments and reports one line; credentials never reach Ray's logs; the
embedded Ray listens on 127.0.0.1 only; transient storage errors are retried, permanent ones not.

Pure logic first (catalog rules, URI normalisation, error pickling, retry policy), then real
files and ffmpeg (concat quoting, output ownership, stitch failures), the real tiny character
in-process (crash between publish and manifest), and last real Ray: the embedded local Ray
(`run_dub` without an address) and a Ray head with S3 credentials only in its environment.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import json
import pickle
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import pytest

from lipsync.config import DubConfig, load_config
from lipsync.dub import retry
from lipsync.dub.catalog import CatalogItem, CatalogUris, normalise_uri, parse_catalog, read_catalog
from lipsync.dub.plan import ItemPlan, Shard, output_state, uri_sha256
from lipsync.dub.manifest import read_all
from lipsync.dub.report import manifest_entry
from lipsync.errors import InputError, MediaError, OutputExistsError
from lipsync.io import media, storage

ROOT = "/r/out"
SOURCE = "/r/cats/cat.csv"


def parse(*rows: str, header: str = "id,character,audio,output,overwrite", root: str = ROOT,
          **options) -> list[CatalogItem]:
    return parse_catalog(header + "\n" + "".join(r + "\n" for r in rows), "csv", SOURCE, root, **options)


def problem_of(*rows: str, **kwargs) -> str:
    with pytest.raises(InputError) as e:
        parse(*rows, **kwargs)
    assert e.value.path == SOURCE and "\n" not in str(e.value)
    return e.value.problem


# ---------------------------------------------------------------------------------------------
# 1, 2, 5: catalog rules on outputs (pure logic)


@pytest.mark.parametrize("output", ["/r/audio/a.mp4", "file:///r/audio/a.mp4", "/r/audio/../audio/./a.mp4",
                                    "/r//audio/a.mp4"])
def test_an_output_equal_to_an_audio_input_is_a_catalog_error(output):
    problem = problem_of(f"a,/r/chars/obama,/r/audio/a.mp4,{output},", allow_outputs_outside_root=True)
    assert problem.startswith("row 1: output") and "is the audio of row 1 (id 'a')" in problem


def test_an_output_that_is_another_rows_input_or_inside_a_bundle_is_a_catalog_error():
    problem = problem_of("a,/r/chars/obama,/r/audio/a.wav,,", "b,/r/chars/obama,/r/audio/b.wav,file:///r/audio/a.wav.mp4,",
                         "c,/r/chars/obama,/r/audio/a.wav.mp4,,", allow_outputs_outside_root=True)
    assert problem.startswith("row 2: output") and "is the audio of row 3 (id 'c')" in problem
    inside = problem_of("a,/r/out/obama.mp4,/r/audio/a.wav,obama.mp4/x.mp4,")  # bundle under the root
    assert "lies inside the character bundle of row 1" in inside
    same = problem_of("a,/r/out/obama.mp4,/r/audio/a.wav,obama.mp4,")
    assert "is the character bundle of row 1" in same


def test_outputs_outside_the_root_need_the_setting_and_bookkeeping_dirs_are_off_limits():
    for output in ("/elsewhere/a.mp4", "../a.mp4", "s3://bucket/a.mp4", "/r/outside.mp4", "/r/out2/a.mp4"):
        problem = problem_of(f"a,/r/c,/r/a.wav,{output},")
        assert "is outside the output root '/r/out'" in problem and "allow_outputs_outside_root" in problem, output
        (item,) = parse(f"a,/r/c,/r/a.wav,{output},", allow_outputs_outside_root=True)
        assert item.output == (output if output != "../a.mp4" else "/r/a.mp4")
    for output in ("_work/x/a.mp4", "_reports/a.mp4", "/r/out/_work/a.mp4"):
        assert "bookkeeping directory" in problem_of(f"a,/r/c,/r/a.wav,{output},", allow_outputs_outside_root=True)
    (a, b) = parse("a,/r/c,/r/a.wav,,", "b,/r/c,/r/b.wav,season1/_work.mp4,")  # only the dirs are reserved
    assert (a.output, b.output) == ("/r/out/a.mp4", "/r/out/season1/_work.mp4")


@pytest.mark.parametrize("first, second", [
    ("/r/out/same.mp4", "file:///r/out/same.mp4"),
    ("/r/out/same.mp4", "/r/out/x/../same.mp4"),
    ("/r/out/same.mp4", "/r/out//same.mp4"),
    ("s3://b/out/same.mp4", "s3://b/out/./x/../same.mp4"),
    ("s3://b/out/same.mp4", "s3a://b/out//same.mp4"),
    ("same.mp4", "/r/out/same.mp4"),  # relative: against the output root
])
def test_duplicate_outputs_spelled_two_ways_are_a_catalog_error(first, second):
    problem = problem_of(f"a,/r/c,/r/a.wav,{first},", f"b,/r/c,/r/b.wav,{second},", allow_outputs_outside_root=True)
    assert problem.startswith(f"row 2: duplicate output {second!r}") and "row 1" in problem


def test_symlinked_local_paths_are_one_file(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert normalise_uri(str(tmp_path / "link" / "a.mp4")) == normalise_uri(f"file://{tmp_path}/real/a.mp4")
    assert normalise_uri("s3://b/k") != normalise_uri("s3://c/k") != normalise_uri("/b/k")


def test_the_catalogs_cached_normalisation_resolves_symlinks_as_realpath_does(tmp_path, monkeypatch):
    """CatalogUris resolves a directory once and joins names to it: it must still give os.path.realpath's
    answer for a symlinked directory, a symlinked (or dangling) file, a `..` after a symlink, hidden names,
    top-level files, relative and s3 URIs."""
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    (tmp_path / "real" / "a.wav").write_bytes(b"x")
    (tmp_path / "other" / "file-link.wav").symlink_to(tmp_path / "real" / "a.wav")
    (tmp_path / "other" / "dangling.mp4").symlink_to(tmp_path / "nowhere" / "z.mp4")
    (tmp_path / "other" / "dir-link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    uris = [str(tmp_path / "link" / "b.mp4"), f"file://{tmp_path}/link/./b.mp4", str(tmp_path / "other" / "file-link.wav"),
            str(tmp_path / "link" / ".." / "a.wav"),  # `..` from the link's target: real/a.wav, not tmp/a.wav
            "link/c.mp4", "other//x.mp4", ".", "/", "s3://b/out/./x/../k.mp4", str(tmp_path / "missing" / "y.mp4"),
            str(tmp_path / "other" / "dangling.mp4"), str(tmp_path / "other" / "dir-link" / "d.mp4"),
            str(tmp_path / ".hidden" / "h.mp4"), f"{tmp_path}/real/", "/no-such-top-level.mp4"]
    cached = CatalogUris()
    for uri in uris + uris:  # twice: the second round is answered from the caches
        assert cached(uri) == normalise_uri(uri), uri
    assert cached(str(tmp_path / "link" / ".." / "a.wav")) == f"file://{tmp_path}/real/a.wav"
    assert cached(str(tmp_path / "other" / "file-link.wav")) == f"file://{tmp_path}/real/a.wav"
    assert cached(str(tmp_path / "other" / "dangling.mp4")) == f"file://{tmp_path}/nowhere/z.mp4"


def test_overwrite_column():
    items = parse("a,c,a.wav,,true", "b,c,b.wav,,No", "c,c,c.wav,,1", "d,c,d.wav,,", "e,c,e.wav,, YES ")
    assert [i.overwrite for i in items] == [True, False, True, False, True]
    assert problem_of("a,c,a.wav,,maybe") == "row 1: overwrite must be true or false, got 'maybe'"
    text = json.dumps({"id": "a", "character": "c", "audio": "a.wav", "overwrite": True}) + "\n"
    assert parse_catalog(text, "jsonl", SOURCE, ROOT)[0].overwrite is True


def test_read_catalog_passes_the_setting(tmp_path):
    cat = tmp_path / "cat.csv"
    cat.write_text("id,character,audio,output\na,c,a.wav,/elsewhere/a.mp4\n")
    with pytest.raises(InputError, match="outside the output root"):
        read_catalog(str(cat), str(tmp_path / "out"))
    assert read_catalog(str(cat), str(tmp_path / "out"), allow_outputs_outside_root=True)[0].output == \
        "/elsewhere/a.mp4"


# ---------------------------------------------------------------------------------------------
# 3: errors survive pickling with their one-line reason


def test_input_errors_pickle_with_their_reason():
    from lipsync.config import ConfigError

    errors = [InputError("/a.wav", "not a  media\nfile"), MediaError("/b.mp4", "concat failed", "x\nlast line"),
              OutputExistsError("s3://b/o.mp4"), InputError(None, "bad option"), ConfigError("c.yaml", "bad key")]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and "\n" not in str(back)
        assert (back.path, back.problem) == (error.path, error.problem)
    assert pickle.loads(pickle.dumps(errors[1])).stderr_tail == "x\nlast line"
    assert str(errors[1]) == "/b.mp4: concat failed (ffmpeg: last line)"  # not appended twice


# ---------------------------------------------------------------------------------------------
# 9: the retry policy (pure logic: real exception types, injected sleep)


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def test_transient_and_permanent_errors_are_told_apart():
    import aiohttp
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    from s3fs.errors import translate_boto_error

    transient = [EndpointConnectionError(endpoint_url="http://s3:8333"), ReadTimeoutError(endpoint_url="http://s3"),
                 ConnectTimeoutError(endpoint_url="http://s3"), _client_error("SlowDown", 503),
                 _client_error("InternalError", 500), translate_boto_error(_client_error("SlowDown", 503)),
                 translate_boto_error(_client_error("InternalError", 500)), ConnectionResetError(),
                 TimeoutError(), asyncio.TimeoutError(), OSError(errno.EIO, "i/o"), OSError("no errno"),
                 aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut")]
    permanent = [FileNotFoundError("x"), PermissionError("x"), IsADirectoryError("x"), NotADirectoryError("x"),
                 translate_boto_error(_client_error("NoSuchKey", 404)),
                 translate_boto_error(_client_error("AccessDenied", 403)),
                 translate_boto_error(_client_error("InvalidAccessKeyId", 403)),
                 translate_boto_error(_client_error("InvalidArgument", 400)), _client_error("NoSuchKey", 404),
                 OSError(errno.ENOSPC, "full"), InputError("a.wav", "not audio"), MediaError("a.mp4", "bad"),
                 ValueError("x"), RuntimeError("a bug"), KeyError("k")]
    assert [e for e in transient if not retry.is_transient(e)] == []
    assert [e for e in permanent if retry.is_transient(e)] == []


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_errors_are_retried_with_exponential_backoff():
    sleeps: list[float] = []
    fn = Flaky(ConnectionResetError(), TimeoutError())
    assert retry.call_with_retries(fn, sleep=sleeps.append, rng=lambda: 1.0, base_delay_s=0.5) == "done"
    assert fn.calls == 3 and sleeps == [0.5, 1.0]
    sleeps.clear()
    fn = Flaky(*[ConnectionResetError(str(i)) for i in range(10)])
    with pytest.raises(ConnectionResetError, match="^3$"):  # the last one, after 4 tries
        retry.call_with_retries(fn, attempts=4, base_delay_s=1.0, max_delay_s=3.0, sleep=sleeps.append,
                                rng=lambda: 1.0)
    assert fn.calls == 4 and sleeps == [1.0, 2.0, 3.0]  # capped
    assert retry.backoff_delays(3, 1.0, 10.0, rng=lambda: 0.0) == [0.5, 1.0]  # jitter: at least half


def test_permanent_errors_are_not_retried():
    for error in (FileNotFoundError("gone"), InputError("a.wav", "not audio"), PermissionError("denied")):
        sleeps: list[float] = []
        fn = Flaky(error)
        with pytest.raises(type(error)):
            retry.call_with_retries(fn, sleep=sleeps.append)
        assert fn.calls == 1 and sleeps == []


def test_retry_settings_are_module_constants_read_at_call_time(monkeypatch):
    monkeypatch.setattr(retry, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(retry, "RETRY_BASE_DELAY_S", 0.25)
    sleeps: list[float] = []
    fn = Flaky(TimeoutError(), TimeoutError(), TimeoutError())
    with pytest.raises(TimeoutError):
        retry.call_with_retries(fn, sleep=sleeps.append, rng=lambda: 1.0)
    assert fn.calls == 2 and sleeps == [0.25]


@pytest.mark.integration
def test_real_s3_outage_is_retried_and_real_permanent_errors_are_not(s3_tmp, s3_server, monkeypatch):
    """Real s3fs against SeaweedFS: unreachable first (the endpoint is a closed port), back during
    the backoff wait -> the read succeeds; a missing key and a wrong secret fail at once."""
    uri = storage.join(s3_tmp, "x.bin")
    storage.write_bytes(uri, b"payload")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    seen: list[BaseException] = []

    def read() -> bytes:
        try:
            return storage.read_bytes(uri)
        except Exception as e:
            seen.append(e)
            raise

    monkeypatch.setenv(storage.ENDPOINT_ENV, closed)
    back = lambda _s: monkeypatch.setenv(storage.ENDPOINT_ENV, s3_server.endpoint)  # noqa: E731
    assert retry.call_with_retries(read, sleep=back) == b"payload"
    assert len(seen) == 1 and retry.is_transient(seen[0]), seen
    seen.clear()
    missing = storage.join(s3_tmp, "missing.bin")
    with pytest.raises(FileNotFoundError):
        retry.call_with_retries(lambda: storage.read_bytes(missing), sleep=lambda s: seen.append(s))
    monkeypatch.setenv(storage.SECRET_ENV, "wrong-secret")
    with pytest.raises(PermissionError):
        retry.call_with_retries(read, sleep=lambda s: seen.append(s))
    assert len(seen) == 1 and isinstance(seen[0], PermissionError)  # one try, no sleep


# ---------------------------------------------------------------------------------------------
# 4: credentials never go into a runtime_env


def test_worker_env_carries_no_credentials(monkeypatch, tmp_path):
    from cluster.train import run_config, worker_env
    from lipsync.config import TrainConfig

    secret = f"planted-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "planted-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", secret + "-token")
    monkeypatch.setenv(storage.ENDPOINT_ENV, "http://10.0.0.5:8333")
    monkeypatch.setenv(storage.CACHE_DIR_ENV, str(tmp_path / "cache"))
    assert worker_env() == {storage.ENDPOINT_ENV: "http://10.0.0.5:8333",
                            storage.CACHE_DIR_ENV: str(tmp_path / "cache")}
    text = json.dumps(run_config(str(tmp_path / "runs"), "run", load_config(TrainConfig), 1).worker_runtime_env)
    assert secret not in text and "planted-key-id" not in text and "10.0.0.5" in text


# ---------------------------------------------------------------------------------------------
# real files and ffmpeg: concat quoting, output ownership, stitch failures

FPS = 25


def write_video(path: Path, frames: int, seed: int = 0, audio: Path | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with media.VideoWriter(path, 64, 48, media.EncodeSettings(crf=0), audio=audio) as w:
        for _ in range(frames):
            w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    return path


def write_tone(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    media.write_wav(path, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return path


def test_concat_list_escapes_quotes_in_paths(tmp_path):
    root = tmp_path / "studio's 'dubs'"
    segments = [write_video(root / f"it's seg {i}.mp4", 10, seed=i) for i in range(2)]
    out = root / "joined.mp4"
    media.concat_segments(segments, out)
    assert media.count_video_frames(out) == 20
    with pytest.raises(ValueError, match="line breaks"):
        media.concat_segments([root / "a\nb.mp4"], root / "x.mp4")


def test_output_state_tells_own_changed_and_foreign_files(tmp_path):
    out = write_video(tmp_path / "out" / "a.mp4", 10)
    entry = manifest_entry({"k": 1}, str(out), 10, out.stat().st_size, uri_sha256(str(out)))
    assert entry["sha256"] == storage.file_sha256(out)
    assert output_state(str(tmp_path / "out" / "none.mp4"), entry) == "absent"
    assert output_state(str(out), entry) == "own"
    assert output_state(f"file://{out}", entry) == "own"  # the entry's spelling may differ
    assert output_state(str(out), None) == "foreign"
    assert output_state(str(out), {**entry, "output": str(tmp_path / "other.mp4")}) == "foreign"
    legacy = {"key": {"k": 1}, "output": str(out), "frames": 10}  # manifests from before hashes
    assert output_state(str(out), legacy) == "own"
    assert output_state(str(out), {**legacy, "frames": 11}) == "changed"
    write_video(out, 10, seed=1)  # same frame count, other pixels: not what this job published
    assert output_state(str(out), entry) == "changed"
    out.write_bytes(b"not a video")
    assert output_state(str(out), legacy) == "changed"


def _stitch_plan(root: Path, output: Path, frames: int = 20, **kw) -> ItemPlan:
    work = root / "_work" / "run" / "a"
    for i in range(frames // 10):
        write_video(work / f"seg_{i:05d}.mp4", 10, seed=i)
    audio = write_tone(root / "a.wav", frames / FPS)
    item = CatalogItem("a", "unused-character", str(audio), str(output))
    shards = [Shard("a", i, 10 * i, 10 * i + 10) for i in range(frames // 10)]
    return ItemPlan(item, "render", {"k": 1}, n_frames=frames, duration=frames / FPS, work=str(work), shards=shards,
                    **kw)


def test_failed_stitch_keeps_its_segments_and_reports_one_line(tmp_path):
    from cluster.dub import StitchFailure, StitchResult, stitch_one

    root = tmp_path / "o'neil's dubs"  # a quote in the output root: the concat list must escape it
    (root / "blocker").parent.mkdir(parents=True, exist_ok=True)
    (root / "blocker").write_text("a file where a directory should be")
    plan = _stitch_plan(root, root / "blocker" / "a.mp4")
    cfg = load_config(DubConfig)
    failed = stitch_one(plan, cfg)
    assert isinstance(failed, StitchFailure) and "\n" not in failed.error and "blocker" in failed.error
    segments = sorted(p.name for p in Path(plan.work).iterdir())
    assert segments == ["seg_00000.mp4", "seg_00001.mp4"]  # kept for the next run; no output.json

    good = _stitch_plan(root, root / "a.mp4")
    result = stitch_one(good, cfg)
    assert isinstance(result, StitchResult), result
    assert media.count_video_frames(root / "a.mp4") == 20
    record = json.loads((Path(good.work) / "output.json").read_text())
    assert (record["output"], record["frames"], record["sha256"], record["size"]) == \
        (str(root / "a.mp4"), 20, storage.file_sha256(root / "a.mp4"), (root / "a.mp4").stat().st_size)
    assert (result.sha256, result.size) == (record["sha256"], record["size"])
    assert (Path(good.work) / "seg_00000.mp4").exists()  # the driver deletes them after the manifest write


def test_stitch_does_not_replace_a_file_that_appeared_while_rendering(tmp_path):
    from cluster.dub import StitchFailure, stitch_one

    plan = _stitch_plan(tmp_path, tmp_path / "a.mp4")  # planned while the output was absent
    (tmp_path / "a.mp4").write_bytes(b"someone else's file")
    failed = stitch_one(plan, load_config(DubConfig))
    assert isinstance(failed, StitchFailure) and "was not written by this job" in failed.error
    assert (tmp_path / "a.mp4").read_bytes() == b"someone else's file"
    forced = _stitch_plan(tmp_path, tmp_path / "a.mp4", overwrite=True)
    assert not isinstance(stitch_one(forced, load_config(DubConfig)), StitchFailure)
    assert media.count_video_frames(tmp_path / "a.mp4") == 20


_KILLED_STITCH = """
import os, pickle, signal, sys
import cluster.dub as dub
from lipsync.config import DubConfig, load_config

def killed_before_the_publish(*args, **kwargs):  # stitch_one's record of the publish: the join is done
    os.kill(os.getpid(), signal.SIGKILL)

dub.manifest_entry = killed_before_the_publish
with open(sys.argv[1], "rb") as f:
    dub.stitch_one(pickle.load(f), load_config(DubConfig))
"""


def test_a_stitch_killed_before_its_publish_leaves_nothing_among_the_outputs(tmp_path):
    """The temp file of a stitch lives in the item's work prefix: a process killed between the
    join and the publish (no finally runs) leaves it there, where the item's next successful run
    deletes it with the segments, and nothing beside the published outputs."""
    import subprocess
    import sys

    root = tmp_path / "out"
    plan = _stitch_plan(root, root / "a.mp4")
    (tmp_path / "plan.pkl").write_bytes(pickle.dumps(plan))
    child = subprocess.run([sys.executable, "-c", _KILLED_STITCH, str(tmp_path / "plan.pkl")],
                           cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir()) == ["_work", "a.wav"]  # no temp, no concat list, no output
    left = sorted(p.name for p in Path(plan.work).iterdir())
    assert left[1:] == ["seg_00000.mp4", "seg_00001.mp4"] and left[0].startswith(".a.mp4.tmp-"), left
    assert media.count_video_frames(Path(plan.work) / left[0]) == 20  # the joined file, never published


# ---------------------------------------------------------------------------------------------
# the real tiny character, in-process: output refusal, segment checks, a crash between publish
# and manifest write

from test_dub_ray import CLIPS, audio_dir, character, expected_frames  # noqa: E402,F401 - fixtures


@pytest.mark.integration
@pytest.mark.media
def test_plan_refuses_foreign_outputs_rechecks_segments_and_adopts_unrecorded_publishes(character, audio_dir,
                                                                                         tmp_path):
    from cluster.dub import RenderShards, StitchResult, shard_rows, stitch_one
    from lipsync.bundle import load_character
    from lipsync.dub.plan import LruCache, plan_item, run_key

    cfg = load_config(DubConfig, overrides=["shard_frames=25", "device=cpu"])
    out = tmp_path / "out"
    characters = LruCache(lambda uri: load_character(uri, device="cpu"), 1)
    item = CatalogItem("radio", character, str(audio_dir / "radio.wav"), str(out / "radio.mp4"), crf=0)

    def plan(entry=None, it=item, **kw):
        return plan_item(it, output_root=str(out), run=run_key(cfg), cfg=cfg, characters=characters,
                         manifest_entry=entry, **kw)

    # a file nobody recorded sits at the output: refused, left alone; overwrite allows it
    write_video(out / "radio.mp4", 5)
    before = (out / "radio.mp4").read_bytes()
    with pytest.raises(InputError, match="was not written by this job.*overwrite"):
        plan()
    assert (out / "radio.mp4").read_bytes() == before
    assert plan(overwrite=True).status == "render"
    (out / "radio.mp4").unlink()
    p = plan()
    assert (p.status, p.existing, len(p.shards)) == ("render", "absent", 3)
    actor = RenderShards(cfg, "cpu")
    rows = shard_rows([p], cfg)
    assert [actor.render_row(r)["reused"] for r in rows] == [False, False, False]
    # a truncated segment is rendered again; complete ones are reused
    seg1 = Path(rows[1]["segment"])
    seg1.write_bytes(seg1.read_bytes()[: seg1.stat().st_size // 3])
    results = [actor.render_row(r) for r in rows]
    assert [(r["reused"], r["error"]) for r in results] == [(True, ""), (False, ""), (True, "")]
    assert media.count_video_frames(seg1) == 25
    published = stitch_one(p, cfg)
    assert isinstance(published, StitchResult)
    # the driver died before writing the manifest: the re-run adopts the output from output.json
    again = plan(entry=None)
    assert (again.status, again.existing) == ("skipped", "own")
    assert again.record["sha256"] == published.sha256 == storage.file_sha256(out / "radio.mp4")
    assert again.n_frames == expected_frames("radio")
    # a manifest entry naming the output but another file there: refused as changed
    write_video(out / "radio.mp4", expected_frames("radio"), seed=3)
    with pytest.raises(InputError, match="differs from the file this job published"):
        plan(entry=again.record)


# ---------------------------------------------------------------------------------------------
# real Ray: the embedded local Ray (run_dub without an address)

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def ray_listening_sockets() -> list[tuple[int, str, str, int]]:
    """(pid, name, ip, port) of every listening socket of this process and of the Ray processes it
    started (those whose command line names this Ray session, and all their descendants)."""
    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    me = psutil.Process()
    procs = {me.pid: me}
    for child in me.children(recursive=True):
        try:
            if session in " ".join(child.cmdline()):
                procs[child.pid] = child
                procs.update({c.pid: c for c in child.children(recursive=True)})
        except psutil.Error:
            continue
    found = []
    for proc in procs.values():
        try:
            found += [(proc.pid, proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "character", "audio", "output", "start_frame", "crf", "overwrite"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def no_ray_address(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.integration
def test_embedded_ray_is_loopback_only_and_task_errors_arrive_whole(no_ray_address):
    import ray

    from cluster.dub import init_ray

    assert init_ray(None) is True
    try:
        @ray.remote(num_cpus=0)
        def fails() -> None:
            raise MediaError("/o/it's.mp4", "concatenating segments failed", "x\nInvalid data found")

        with pytest.raises(MediaError) as e:
            ray.get(fails.remote())
        cause = e.value.cause if hasattr(e.value, "cause") else e.value
        assert isinstance(cause, MediaError) and str(cause) == \
            "/o/it's.mp4: concatenating segments failed (ffmpeg: Invalid data found)"
        sockets = ray_listening_sockets()
        assert len({pid for pid, *_ in sockets}) >= 3, sockets  # driver, GCS, raylet, ... were seen
        assert [s for s in sockets if s[2] not in LOOPBACK] == []
        assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"
    finally:
        ray.shutdown()


@pytest.mark.integration
@pytest.mark.media
def test_embedded_dub_guards_outputs_keeps_failed_segments_and_listens_on_loopback(character, audio_dir, tmp_path,
                                                                                   no_ray_address):
    import ray

    from cluster.dub import run_dub

    cfg = load_config(DubConfig, overrides=["shard_frames=25", "actors=1", "device=cpu",
                                            "allow_outputs_outside_root=true"])
    root, out = tmp_path / "root", tmp_path / "root" / "out"
    out.mkdir(parents=True)
    radio, news = str(audio_dir / "radio.wav"), str(audio_dir / "news.wav")
    # an output that is the row's own audio: a catalog error, nothing runs, the audio is intact
    shutil.copy(radio, root / "radio.wav")
    bad = write_rows(root / "bad.csv", [{"id": "x", "character": character, "audio": str(root / "radio.wav"),
                                         "output": f"file://{root}/radio.wav.mp4"},
                                        {"id": "y", "character": character, "audio": f"{root}/./radio.wav.mp4",
                                         "output": ""}])
    audio_before = (root / "radio.wav").read_bytes()
    with pytest.raises(InputError, match="row 1: output .* is the audio of row 2"):
        run_dub(str(bad), str(out), cfg)
    assert not ray.is_initialized() and (root / "radio.wav").read_bytes() == audio_before
    assert list(out.iterdir()) == []

    taken = write_video(out / "taken.mp4", 5, seed=1).read_bytes()
    write_video(out / "forced.mp4", 5, seed=2)
    (out / "blocker").write_text("a file where the blocked item's directory should be")
    catalog = write_rows(root / "catalog.csv", [
        {"id": "fresh", "character": character, "audio": radio, "crf": 0},
        {"id": "taken", "character": character, "audio": news, "crf": 0},
        {"id": "forced", "character": character, "audio": news, "start_frame": 10, "crf": 0, "overwrite": "true"},
        {"id": "blocked", "character": character, "audio": radio, "output": "blocker/b.mp4", "start_frame": 7,
         "crf": 0},
    ])
    seen: list = []

    def watch(progress) -> None:
        if progress.frames_done > 0 and not seen:  # actors are up and rendering
            seen.append(ray_listening_sockets())

    first = run_dub(str(catalog), str(out), cfg, progress=watch)
    items = {r.id: r for r in first.items}
    assert {k: r.status for k, r in items.items()} == {"fresh": "ok", "taken": "failed", "forced": "ok",
                                                       "blocked": "failed"}, items
    assert "was not written by this job" in items["taken"].error and "\n" not in items["taken"].error
    assert (out / "taken.mp4").read_bytes() == taken  # left exactly as it was
    assert media.count_video_frames(out / "forced.mp4") == expected_frames("news")
    blocked = items["blocked"].error
    assert blocked.startswith("stitch: ") and "\n" not in blocked and "Unserializable" not in blocked
    assert len(blocked) < 400 and "\x1b" not in blocked
    work = sorted(p.name for p in out.glob("_work/*/blocked/*.mp4"))
    assert work == ["seg_00000.mp4", "seg_00001.mp4", "seg_00002.mp4"]  # kept for the next run
    assert not list(out.glob("_work/*/fresh")) and not list(out.glob("_work/*/forced"))
    manifest = read_all(str(out))  # issue 10: _manifest/<id>.json records
    assert sorted(manifest) == ["forced", "fresh"]
    assert manifest["fresh"]["sha256"] == storage.file_sha256(out / "fresh.mp4")
    assert seen and len({pid for pid, *_ in seen[0]}) >= 3, seen
    assert [s for s in seen[0] if s[2] not in LOOPBACK] == [], seen[0]

    # re-run: the blocked item publishes from its kept segments; a tampered output is not skipped
    # and not replaced
    (out / "blocker").unlink()
    fresh_mp4 = out / "fresh.mp4"
    shutil.copy(out / "forced.mp4", fresh_mp4)
    tampered = fresh_mp4.read_bytes()
    second = {r.id: r for r in run_dub(str(catalog), str(out), cfg).items}
    assert {k: r.status for k, r in second.items()} == {"fresh": "failed", "taken": "failed", "forced": "skipped",
                                                        "blocked": "ok"}, second
    assert (second["blocked"].segments_reused, second["blocked"].segments_rendered) == (3, 0)
    assert media.count_video_frames(out / "blocker" / "b.mp4") == expected_frames("radio")
    assert "differs from the file this job published" in second["fresh"].error
    assert fresh_mp4.read_bytes() == tampered

    # the run's overwrite: both refused items are dubbed now
    third = run_dub(str(catalog), str(out), cfg, overwrite=True)
    statuses = {r.id: r.status for r in third.items}
    assert statuses == {"fresh": "ok", "taken": "ok", "forced": "skipped", "blocked": "skipped"}, third.items
    assert third.report["run"]["overwrite"] is True
    assert media.count_video_frames(fresh_mp4) == expected_frames("radio")
    assert media.count_video_frames(out / "taken.mp4") == expected_frames("news")
    assert not list(out.glob("_work/*/*"))


# ---------------------------------------------------------------------------------------------
# 4: a real dub on S3 with the secret only in the environment of `ray start`


def grep_tree(root: Path, needle: bytes) -> tuple[int, list[str]]:
    """(files read, files containing `needle`) under `root` (sockets and the like are skipped)."""
    read, hits = 0, []
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
        except OSError:
            continue
        read += 1
        if needle in data:
            hits.append(str(path.relative_to(root)))
    return read, hits


@pytest.mark.integration
@pytest.mark.media
def test_s3_secret_never_reaches_ray_logs_reports_or_outputs(character, audio_dir, tmp_path, monkeypatch):
    """A SeaweedFS of its own with a random secret (the suite's default secret is a literal in
    tests/servers.py, which travels in the job's working_dir); the secret is set only in the
    environment of `ray start` (as on a node); the job's runtime_env gets the endpoint only."""
    import servers

    if servers.weed_binary() is None or servers.venv_script("ray") is None:
        pytest.skip("needs SeaweedFS (weed) and the ray script")
    planted = f"planted-{uuid.uuid4().hex}"
    secret = planted.encode()
    s3 = servers.start_s3_server(tmp_path / "s3", key=f"key-{uuid.uuid4().hex[:8]}", secret=planted)
    head = None
    try:
        for key, value in {**s3.env(), **servers.RAY_TEST_ENV}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        bucket = s3.make_bucket("secret-test")
        head = servers.start_ray_head(num_cpus=2)  # inherits the credentials, as a node's `ray start` would
        bundle = storage.join(bucket, "characters", "obama_tiny")
        storage.upload_dir(character, bundle)
        storage.write_bytes(storage.join(bucket, "audio", "radio.wav"), (audio_dir / "radio.wav").read_bytes())
        rows = [{"id": "radio", "character": "characters/obama_tiny", "audio": "audio/radio.wav", "crf": 0},
                {"id": "missing", "character": "characters/obama_tiny", "audio": "audio/none.wav"}]
        catalog = storage.join(bucket, "catalog.jsonl")
        storage.write_text(catalog, "".join(json.dumps(r) + "\n" for r in rows))
        out = storage.join(bucket, "out")
        args = ["python", "jobs/batch_dub.py", "--catalog", catalog, "--output-root", out, "--shard-frames", "25",
                "--actors", "1", "--device", "cpu"]
        rc, log = servers.run_ray_job(head, args, working_dir=Path(__file__).resolve().parents[1],
                                      env={storage.ENDPOINT_ENV: s3.endpoint}, timeout=300)
        assert "failed items (1)" in log, log[-3000:]  # ran to the end: "missing" fails, radio is dubbed
        # a control job with a canary in its runtime_env: the logs grepped below do record
        # runtime_env contents (which is how the secret leaked before)
        canary = f"canary-{uuid.uuid4().hex}"
        rc2, log2 = servers.run_ray_job(head, ["python", "-c", "print('ok')"],
                                        working_dir=Path(__file__).resolve().parents[1] / "lipsync" / "configs",
                                        env={"LIPSYNC_CANARY": canary}, timeout=120)
        assert rc2 == 0, log2[-2000:]
        head.stop()
        fs, prefix = storage.filesystem(out)
        objects = fs.find(prefix)
        assert len([o for o in objects if "/_reports/" in o and o.endswith(".json")]) == 1 and any(o.endswith("/radio.mp4") for o in objects)
        in_storage = [o for o in objects if secret in fs.cat_file(o)]
        read, in_logs = grep_tree(head.temp_dir, secret)
        _, canary_hits = grep_tree(head.temp_dir, canary.encode())
        assert read > 20 and any("runtime_env" in h and h.endswith(".log") for h in canary_hits), (read, canary_hits)
        assert in_logs == [] and in_storage == [] and planted not in log and planted not in log2
    finally:
        if head is not None:
            head.stop()
            servers.remove_ray_temp_dir(head)
        s3.stop()
