"""`lipsync prepare | train | render | dub | eval | info`: parse arguments, load the config, call the library.

Exit codes: 0 done; 2 bad input or option (`lipsync.errors.InputError`, config errors included):
one line on stderr, nothing run or written; 1 an unexpected error (a bug or a failing
environment): one line naming a log file that holds the traceback; 3 `dub` finished but some
items failed (see its report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lipsync.config import DubConfig, EvalConfig, PrepareConfig, RenderConfig, TrainConfig, load_config
from lipsync.dub import dub_flags
from lipsync.dub.report import summary
from lipsync.errors import InputError
from lipsync.io import storage

# The commands import their library (torch, librosa, torchmetrics, mediapipe: seconds) when they
# run, so that `--version`, `--help` and option errors answer at once.

EXIT_CODES_EPILOG = (
    "\b\nExit codes:\n"
    "  0    done (dub: every item done or skipped)\n"
    "  1    unexpected error (a bug or a failing environment): one line naming a log file with the traceback\n"
    "  2    bad input or option: one line on stderr, nothing run or written\n"
    "  3    dub: the run finished but some items failed (see its report); dub --dry-run: some rows would fail\n"
    "  130  interrupted (Ctrl-C)"
)

# rich_markup_mode=None: click's plain help, where a boolean option reads as a flag ("--overwrite")
# instead of typer's rich "--overwrite <bool>", and the exit codes epilog keeps its lines.
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lip-sync dubbing engine.",
                  pretty_exceptions_enable=False, rich_markup_mode=None, epilog=EXIT_CODES_EPILOG)
console = Console(stderr=True)  # progress bars and summaries (silenced by -q)
error_console = Console(stderr=True)  # the one error line (never silenced)

EXIT_BUG = 1
EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130
LOG_DIR_ENV = "LIPSYNC_LOG_DIR"  # where tracebacks of unexpected errors go (default: <cache>/logs)

ConfigOption = typer.Option(None, "--config", help="your YAML config file (default: the command's own lipsync/configs/*.yaml)")
SetOption = typer.Option([], "--set", help="config override key=value (repeatable, dotted keys for sections)")
PrecisionOption = typer.Option(None, "--precision", help="auto | fp32 | bf16 (auto: bf16 where the device has it natively)")
JsonOption = typer.Option(False, "--json", help="print the result as JSON on stdout (the summary line stays on stderr)")
SilenceOption = typer.Option(None, "--silence", help="rest | keep: where the audio has no voice, the character's own "
                                                     "closed mouth (rest, default) or the generator's (keep)")


OUR_LOGGERS = ("lipsync", "lipsync_cli", "cluster")


def version_text() -> str:
    return f"lipsync {importlib.metadata.version('lipsync')}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time, so that a line logged while a rich progress
    bar is live goes through rich's redirect (above the bar) instead of through the bar."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_log_handler = _StderrHandler()
_log_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))


def setup_logging(verbose: bool, quiet: bool) -> None:
    """stdlib logging to stderr: warnings by default; -v: our debug messages too (third-party
    libraries stay at warnings); -q: errors only, and no progress bars or summary lines.
    Other handlers on the root logger (a test's log capture) are left alone."""
    root = logging.getLogger()
    if _log_handler not in root.handlers:
        root.addHandler(_log_handler)
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose and not quiet else logging.NOTSET)
    console.quiet = quiet


@app.callback(epilog=EXIT_CODES_EPILOG)
def _group(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="debug messages of lipsync on stderr"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="errors only: no progress bars or summaries"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """Lip-sync dubbing engine: prepare | train | render | dub | eval | info."""
    setup_logging(verbose, quiet)


def fail(message: str, code: int = EXIT_INPUT_ERROR) -> None:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def main_output(out: Optional[str], old: Optional[str], old_flag: str, what: str) -> str:
    """The command's main output from -o/--out or its older spelling (a hidden alias)."""
    if out and old and out != old:
        raise InputError(None, f"-o/--out {out} and {old_flag} {old} disagree: give one")
    if not (out or old):
        raise InputError(None, f"missing option -o/--out ({what})")
    return out or old  # type: ignore[return-value]


def print_json(obj) -> None:
    """--json: the command's machine-readable result, alone on stdout."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or storage.default_cache_root() / "logs")


def write_traceback(command: str, error: BaseException) -> Path:
    """The full traceback of an unexpected error, in a file of its own; returns its path."""
    directory = log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(error)))
    return path


@contextlib.contextmanager
def reported_errors(command: str) -> Iterator[None]:
    """InputError -> its one line, exit 2. Anything else is not the user's fault: one line naming
    the log file with the traceback, exit 1."""
    try:
        yield
    except InputError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - reported with its traceback in a file
        try:
            where = f"traceback in {write_traceback(command, e)}"
        except OSError as log_error:
            where = f"could not write the traceback ({log_error})"
        detail = " ".join(str(e).split())[:300]
        fail(f"unexpected {type(e).__name__} in `lipsync {command}`: {detail} ({where})", EXIT_BUG)


# A line of Ray's C++ log: "[2026-12-02 07:27:28,554 E 28708 28708] core_worker.cc:2465: ..."
RAY_NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWE] \d+ \d+\] \S+\.(cc|h):\d+:")


@contextlib.contextmanager
def native_ray_log_to_debug() -> Iterator[None]:
    """Inside the block, Ray's C++ log lines that the driver writes to fd 2 (its core worker echoes
    ERROR-level lines such as core_worker.cc's "has constructor arguments in the object store and
    max_restarts > 0" to stderr, besides its log file under the Ray session) go to the debug log;
    every other byte on fd 2 passes through, and Python's sys.stderr (progress bar, log lines)
    writes to the terminal directly. No fd 2 (a daemon), or a sys.stderr that is not fd 2 (a test's
    capture): nothing to do."""
    try:
        if sys.stderr.fileno() != 2:
            raise OSError("sys.stderr is not fd 2")
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        yield
        return
    read_end, write_end = os.pipe()
    log = logging.getLogger("lipsync_cli.ray")

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if RAY_NATIVE_LOG_LINE.match(line):
                        log.debug("%s", line.decode(errors="replace"))
                    else:
                        os.write(saved, line + b"\n")
            if pending:
                os.write(saved, pending)
        os.close(saved)

    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="backslashreplace")
    python_stderr = sys.stderr
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = terminal
    reader = threading.Thread(target=pump, name="ray-native-log", daemon=True)
    reader.start()
    try:
        yield
    finally:
        terminal.flush()
        sys.stderr = python_stderr
        os.dup2(saved, 2)  # closes the last write end we hold: the reader ends when Ray's processes have
        terminal.close()
        reader.join(timeout=2)


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[..., None]]:
    """A rich progress bar, shown from the first update on (so an early input error prints one
    line only); yields `update(done, total, extra="")`."""
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False,
    )
    task = None

    def update(done: int, total: int | None = None, extra: str = "") -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total, extra=extra)
        bar.update(task, completed=done, total=total, extra=extra)

    try:
        yield update
    finally:
        if task is not None:
            bar.stop()


@app.command()
def prepare(
    video: str = typer.Argument(..., help="talking-head video (path or URI)"),
    name: str = typer.Option(..., "--name", help="character name"),
    out: str = typer.Option(..., "-o", "--out", help="dataset directory to create (path or URI)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
    preview: Optional[str] = typer.Option(None, "--preview", help="write a contact sheet of crops (PNG)"),
    json_: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    set_: List[str] = SetOption,
) -> None:
    """Turn a talking-head video into a character dataset."""
    with reported_errors("prepare"):
        cfg = load_config(PrepareConfig, config, set_)
        from lipsync.data.prepare import prepare as run_prepare

        with progress_bar(f"prepare {name}") as update:
            result = run_prepare(video, name, out, cfg, overwrite=overwrite, preview_uri=preview,
                                 progress=lambda d, t: update(d, max(d, t)))
    fps = result.n_frames / result.seconds if result.seconds else 0.0
    console.print(
        f"prepared [bold]{name}[/] -> {out}: {result.n_frames} frames, {result.duration:.2f} s audio, "
        f"faces found in {result.faces_found}/{result.n_frames} frames, {result.seconds:.1f} s ({fps:.0f} frames/s)"
    )
    if json_:
        print_json({"command": "prepare", "out": out, "name": name, "frames": result.n_frames,
                    "duration_s": result.duration, "faces_found": result.faces_found,
                    "frames_without_face": result.frames_without_face, "seconds": result.seconds,
                    "preview": preview})


def warn_if_undertrained(character: str) -> None:
    """One warning line when the bundle's held-out L1 is not clearly below its reference-copy baseline."""
    from lipsync.bundle import read_train_info, undertrained_warning

    message = undertrained_warning(character, read_train_info(character))
    if message:
        console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@app.command()
def render(
    character: str = typer.Option(..., "--character", help="character bundle (path or URI)"),
    audio: str = typer.Option(..., "--audio", help="audio file, any format ffmpeg reads (path or URI)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="output .mp4 (path or URI)  [required]"),
    output_old: Optional[str] = typer.Option(None, "--output", hidden=True),  # the spelling before -o/--out
    start_frame: int = typer.Option(0, "--start-frame", help="first template frame (bounce index offset)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="frames per generator forward"),
    enhance: bool = typer.Option(False, "--enhance", help="higher quality encode (crf_enhance instead of crf)"),
    crf: Optional[int] = typer.Option(None, "--crf", help="explicit x264 CRF (0 = lossless, for tests)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    precision: Optional[str] = PrecisionOption,
    silence: Optional[str] = SilenceOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
    preview: Optional[str] = typer.Option(None, "--preview", help="also write a PNG of 4 frames, each with its "
                                                                  "painted crop enlarged (path or URI)"),
    json_: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    set_: List[str] = SetOption,
) -> None:
    """Dub one audio file into a video of a trained character."""
    with reported_errors("render"):
        output = main_output(out, output_old, "--output", "the .mp4 to write")
        cfg = load_config(RenderConfig, config, set_, {"batch_size": batch_size, "device": device, "crf": crf,
                                                       "precision": precision, "silence": silence})
        if preview:
            storage.check_output_path(preview)
        warn_if_undertrained(character)
        from lipsync.render import render as run_render

        with progress_bar("render") as update:
            result = run_render(character, audio, output, cfg, enhance=enhance and crf is None,
                                start_frame=start_frame, overwrite=overwrite, progress=lambda d, t: update(d, t))
        if preview:
            from lipsync.render.preview import template_boxes, write_video_preview

            write_video_preview(output, preview, template_boxes(character), n_frames=result.frames,
                                start_frame=start_frame)
    st = result.stats
    fps = st.frames / st.seconds if st.seconds else 0.0
    console.print(f"rendered {output}: {result.frames} frames, {result.duration:.2f} s, {fps:.1f} frames/s"
                  + (f"; {st.no_face} template frames without a face written unchanged" if st.no_face else "")
                  + (f"; {st.nonfinite} non-finite outputs replaced by the template" if st.nonfinite else "")
                  + (f"; preview {preview}" if preview else ""))
    if json_:
        print_json({"command": "render", "out": output, "frames": result.frames, "duration_s": result.duration,
                    "stats": dataclasses.asdict(st), "preview": preview})


@app.command()
def dub(
    catalog: str = typer.Argument(..., help="catalog of items to dub: .csv or .jsonl (path or URI)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="output root: outputs, _work/, _reports/ go here "
                                                                "(also spelled --output-root)  [required]"),
    output_root_old: Optional[str] = typer.Option(None, "--output-root", hidden=True),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: a local Ray)"),
    shard_frames: Optional[int] = typer.Option(None, "--shard-frames", help="frames per render task"),
    actors: Optional[str] = typer.Option(None, "--actors", help="render actors: N, or MIN:MAX to autoscale"),
    crf: Optional[int] = typer.Option(None, "--crf", help="x264 CRF for rows without one (0 = lossless)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
    silence: Optional[str] = SilenceOption,
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="replace files at row outputs that this job did not write"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="plan and validate every row; print items, frames, skips and an estimated "
                                      "render time; render and write nothing (no Ray)"),
    json_: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    set_: List[str] = SetOption,
) -> None:
    """Dub every row of a catalog on Ray. Exit 3 when the run finished but some items failed."""
    with reported_errors("dub"):
        output_root = main_output(out, output_root_old, "--output-root", "the output root")
        cfg = load_config(DubConfig, config, set_, dub_flags(shard_frames=shard_frames, actors=actors, crf=crf,
                                                             device=device, silence=silence))
        if dry_run:
            from lipsync.dub.dryrun import dry_run as plan_only

            planned = plan_only(catalog, output_root, cfg, overwrite=overwrite)
    if dry_run:
        if json_:
            print_json({"command": "dub", "dry_run": True, "output_root": output_root,
                        **dataclasses.asdict(planned), "estimated_render_s": planned.estimated_render_s})
        else:
            for line in planned.lines():
                typer.echo(line)  # stdout: the plan is the command's output
        if planned.failed:
            raise typer.Exit(3)
        return
    with reported_errors("dub"):
        from cluster.dub import run_dub  # imports Ray (seconds): only the command that needs it pays

        verbose = logging.getLogger("lipsync").getEffectiveLevel() <= logging.DEBUG
        with (contextlib.nullcontext() if verbose else native_ray_log_to_debug()), progress_bar("dub") as update:
            run = run_dub(catalog, output_root, cfg, address=address, overwrite=overwrite, quiet_ray=not verbose,
                          progress=lambda p: update(p.frames_done, p.frames_total or None,
                                                    extra=f"items {p.items_done}/{p.items_total}, "
                                                          f"{p.frames_per_second:.1f} frames/s"))
    console.print(summary(run.report, run.report_uri))
    if json_:
        print_json({"command": "dub", "output_root": output_root, "report_uri": run.report_uri, **run.report})
    if run.exit_code:
        raise typer.Exit(run.exit_code)


@app.command()
def train(
    dataset: str = typer.Option(..., "--dataset", help="prepared dataset directory (path or URI)"),
    out: str = typer.Option(..., "-o", "--out", help="character bundle to create (path or URI)"),
    preset: str = typer.Option(..., "--preset", help="model size: tiny | st2d-160 | st2d-328"),
    steps: Optional[int] = typer.Option(None, "--steps", help="generator steps (stage 2), run after "
                                                                 "--syncnet-steps: the plan line shows the sum"),
    syncnet_steps: Optional[int] = typer.Option(None, "--syncnet-steps",
                                                help="SyncNet steps (stage 1; default: train.yaml's syncnet_steps)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    audio_encoder: Optional[str] = typer.Option(
        None, "--audio-encoder", help="pretrained AudioEncoder (SyncTalk_2D audio_visual_encoder.pth layout)"),
    audio_features: Optional[str] = typer.Option(
        None, "--audio-features", help="audio front-end: ave | hubert | wenet (recorded in the bundle)"),
    audio_weights: Optional[str] = typer.Option(
        None, "--audio-weights", help="hubert: local HubertModel directory; wenet: local encoder .onnx "
                                      "(docs/AUDIO.md)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="checkpoints and metrics (default OUT.run)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in the run dir"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing bundle and start a fresh run"),
    json_: bool = JsonOption,
    config: Optional[Path] = ConfigOption,
    set_: List[str] = SetOption,
) -> None:
    """Train a character (SyncNet, then the generator) and write its bundle."""
    with reported_errors("train"):
        cfg = load_config(TrainConfig, config, set_, {
            "preset": preset, "generator_steps": steps, "syncnet_steps": syncnet_steps, "device": device,
            "audio_encoder": audio_encoder,
            "audio_features": {"backend": audio_features, "weights": audio_weights}})
        from lipsync.train import train_character
        from lipsync.train.preflight import StepRateEstimate

        estimate: list[StepRateEstimate] = []  # set with the plan: its time, once steps/s is measured

        def on_plan(plan) -> None:
            console.print(plan.line(), highlight=False, soft_wrap=True)
            estimate.append(StepRateEstimate(plan))

        with progress_bar(f"train {preset}") as update:
            def on_progress(done: int, total: int, extra: str) -> None:
                update(done, total, extra=extra)
                line = estimate[0].update(done, time.monotonic()) if estimate else None
                if line:
                    console.print(line, highlight=False, soft_wrap=True)

            result = train_character(dataset, out, cfg, run_dir=run_dir, resume=resume, overwrite=overwrite,
                                     progress=on_progress, on_plan=on_plan)
    s = result.summary
    acc = s.get("syncnet_val_acc")
    l1 = s.get("val_l1")
    console.print(
        f"trained [bold]{preset}[/] -> {out} (version {result.version[:12]}): {result.syncnet_steps} SyncNet + "
        f"{result.generator_steps} generator steps in {result.seconds:.0f} s"
        + (f"; SyncNet held-out accuracy {acc:.3f}" if acc is not None else "")
        + (f"; held-out L1 {l1:.4f}" if l1 is not None else "")
        + f"; checkpoints in {result.run_dir}"
    )
    if json_:
        print_json({"command": "train", "out": out, "preset": preset, "version": result.version,
                    "syncnet_steps": result.syncnet_steps, "generator_steps": result.generator_steps,
                    "seconds": result.seconds, "run_dir": str(result.run_dir), "summary": s})


@app.command(name="eval")
def eval_(
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="prepared dataset the character was trained on: held-out metrics"),
    character: str = typer.Option(..., "--character", help="character bundle (path or URI)"),
    out: Optional[str] = typer.Option(None, "-o", "--out", help="metrics JSON to write (path or URI)"),
    json_out: Optional[str] = typer.Option(None, "--json", help="metrics JSON to write (path or URI; the spelling "
                                                                "before -o/--out), or - to print it on stdout"),
    audio: Optional[str] = typer.Option(None, "--audio", help="speech the character never heard: mouth aperture "
                                                              "of its dub vs its real footage"),
    dub_out: Optional[str] = typer.Option(None, "--dub", help="keep the --audio dub here (.mp4, path or URI)"),
    strip: Optional[str] = typer.Option(None, "--strip", help="PNG strip real | generated | shuffled"),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", help="evaluate only the first N held-out frames"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    precision: Optional[str] = PrecisionOption,
    config: Optional[Path] = ConfigOption,
    set_: List[str] = SetOption,
) -> None:
    """Self-reconstruction on the held-out frames (--dataset): PSNR/SSIM, lip distance, sync vs
    shuffled audio; and/or the mouth aperture of a dub of unseen speech vs the real footage (--audio).

    The generator runs with lipsync/configs/render.yaml's settings (and --precision), as in a dub.
    Unlike the other commands, eval's --json takes a value (it named the metrics file before -o/--out
    existed): `--json -` prints the metrics JSON on stdout (docs/DECISIONS.md).
    """
    with contextlib.ExitStack() as stack, reported_errors("eval"):
        from lipsync.eval.evaluate import evaluate, markdown_table
        from lipsync.io.storage import json_safe

        to_stdout = json_out == "-"
        if out or not to_stdout:
            json_out = main_output(out, None if to_stdout else json_out, "--json", "the metrics JSON to write")
        else:  # --json - alone: the metrics go to stdout only
            import tempfile

            json_out = str(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lipsync-eval-"))) / "eval.json")
        if dataset is None and audio is None:
            raise InputError(None, "give --dataset (held-out metrics), --audio (unseen speech) or both")
        cfg = load_config(EvalConfig, config, set_, {"device": device})
        render_cfg = load_config(RenderConfig, flags={"precision": precision, "device": device})
        storage.check_output_path(json_out)
        result: dict = {}
        if dataset is not None:
            with progress_bar("eval") as update:
                result = evaluate(dataset, character, json_out, strip_png=strip, max_frames=max_frames, cfg=cfg,
                                  render_cfg=render_cfg, progress=lambda d, t: update(d, t))
        if audio is not None:
            from lipsync.eval.aperture import unseen_speech

            result["unseen_speech"] = unseen_speech(character, audio, render_cfg, dub_out=dub_out)
            storage.write_json(json_out, json_safe(result))
            print_aperture(result["unseen_speech"])
        if to_stdout:
            typer.echo(storage.read_text(json_out).rstrip("\n"))
            if not out:
                json_out = "stdout"
    if dataset is None:
        console.print(f"-> {json_out}")
        return
    console.print(markdown_table(result), highlight=False, soft_wrap=True)
    frames = result["frames"]
    pairing = result["pairing"]
    console.print(f"evaluated {frames['evaluated']} held-out frames ({frames['first']}..{frames['last']}, "
                  f"held_out_fraction {pairing['held_out_fraction']}, sync_audio_offset "
                  f"{pairing['sync_audio_offset']}, from the {pairing['source']}) in {result['seconds']:.0f} s "
                  f"-> {json_out}" + (f", {strip}" if strip else ""))


def print_aperture(report: dict) -> None:
    d, r = report["dub"], report["real"]
    console.print(f"unseen speech {report['audio']}: mouth aperture std {d['std']:.3f} vs {r['std']:.3f} real "
                  f"(ratio {report['std_ratio']:.2f}), mean {d['mean']:.3f} vs {r['mean']:.3f}, "
                  f"{report['inside_real_range']:.0%} of frames inside the real 5-95% range "
                  f"({d['frames']} dub frames, {r['frames']} real)", highlight=False, soft_wrap=True)


@app.command()
def info(
    path: str = typer.Argument(..., help="character bundle dir, prepared dataset dir or dub report .json"),
    json_: bool = typer.Option(False, "--json", help="print the facts as JSON on stdout"),
) -> None:
    """What a bundle (preset, front-end, steps, held-out metrics vs baselines, frames, version), a
    dataset (frames, fps, faceless frames) or a dub report (counts, failures) holds."""
    from lipsync.info import describe, lines

    with reported_errors("info"):
        facts = describe(path)
    if json_:
        typer.echo(json.dumps(facts, indent=2))
    else:
        for line in lines(facts):
            typer.echo(line)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
