"""The one module that talks to ffmpeg: probe, decode video/audio through pipes, encode, concat.

Every ffmpeg process is owned by a function here: argument lists (built with ffmpeg-python, never
shell strings), stderr drained in a thread so pipes cannot deadlock, the process killed in
`finally` when a reader or writer stops early, and failures raised as `MediaError` carrying the
file name and ffmpeg's last stderr lines. Paths here are local files; `lipsync.io.storage` turns
URIs into local files first.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import ffmpeg
import numpy as np

from lipsync.errors import InputError, MediaError

STDERR_TAIL_LINES = 20


def ffmpeg_exe() -> str:
    """A system ffmpeg on PATH when present (may be a faster build), else the imageio-ffmpeg binary."""
    override = os.environ.get("LIPSYNC_FFMPEG")
    if override:
        return override
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: float  # seconds, from the container header
    has_video: bool
    has_audio: bool
    width: int = 0  # display size (rotation applied)
    height: int = 0
    fps: float = 0.0  # average frame rate as reported (VFR sources report their average)
    video_codec: str = ""
    audio_codec: str = ""
    audio_rate: int = 0


class _StderrDrain:
    """Reads a process's stderr in a thread, keeping the last lines (pipes never fill up)."""

    def __init__(self, stream):
        self.lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
        stream.close()

    def tail(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def _check_input_file(path: str | Path) -> str:
    p = Path(path)
    if not p.exists():
        raise InputError(p, "file not found")
    if p.is_dir():
        raise InputError(p, "is a directory, expected a media file")
    if p.stat().st_size == 0:
        raise InputError(p, "file is empty (0 bytes)")
    return str(p)


def _run(args: Sequence[str], path: str | Path, problem: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:])
        raise MediaError(path, problem, tail)
    return proc


# ---------------------------------------------------------------------------------------------
# probe


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_RE = re.compile(r"Stream #\S+.*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"(\d+(?:\.\d+)?) fps")
_AUDIO_RE = re.compile(r"Stream #\S+.*?: Audio: (\w+).*?, (\d+) Hz")
_ROTATION_RE = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees")


def probe(path: str | Path) -> MediaInfo:
    """Read duration, streams, frame size and rate from ffmpeg's banner (there is no ffprobe)."""
    src = _check_input_file(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", src], capture_output=True)
    text = proc.stderr.decode("utf-8", "replace")
    if "Invalid data found" in text or "moov atom not found" in text or "Duration:" not in text:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        raise MediaError(src, "not a media file ffmpeg can read (corrupt, truncated or wrong format)", last)
    m = _DURATION_RE.search(text)
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else 0.0
    info: dict = {"path": src, "duration": duration, "has_video": False, "has_audio": False}
    video = _VIDEO_RE.search(text)
    if video and "attached pic" not in text[video.start() : text.find("\n", video.start())]:
        w, h = int(video.group(2)), int(video.group(3))
        rot = _ROTATION_RE.search(text)
        if rot and round(abs(float(rot.group(1)))) % 180 == 90:
            w, h = h, w  # ffmpeg auto-rotates when decoding, so report the displayed size
        line = text[video.start() : text.find("\n", video.start())]
        fps = _FPS_RE.search(line)
        info.update(has_video=True, width=w, height=h, video_codec=video.group(1),
                    fps=float(fps.group(1)) if fps else 0.0)
    audio = _AUDIO_RE.search(text)
    if audio:
        info.update(has_audio=True, audio_codec=audio.group(1), audio_rate=int(audio.group(2)))
    return MediaInfo(**info)


# ---------------------------------------------------------------------------------------------
# decode


def iter_video_frames(
    path: str | Path, fps: int = 25, pix_fmt: str = "bgr24", info: MediaInfo | None = None
) -> Iterator[np.ndarray]:
    """Yield frames (H, W, 3) uint8 resampled to exactly `fps` (CFR), streaming through a pipe.

    Works for any codec ffmpeg decodes and for variable-frame-rate input (the `fps` filter
    duplicates/drops frames on the output clock). Raises MediaError when ffmpeg fails, and when
    the stream ends far short of what the header promised (a truncated file).
    """
    info = info or probe(path)
    if not info.has_video:
        raise InputError(path, "has no video stream")
    if pix_fmt not in {"bgr24", "rgb24"}:
        raise ValueError(f"unsupported pix_fmt {pix_fmt}")
    w, h = info.width, info.height
    args = (
        ffmpeg.input(str(path))
        .output("pipe:", format="rawvideo", pix_fmt=pix_fmt, vf=f"fps={fps}", an=None, sn=None)
        .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )
    frame_bytes = w * h * 3
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=frame_bytes)
    drain = _StderrDrain(proc.stderr)
    count = 0
    try:
        while True:
            buf = _read_exact(proc.stdout, frame_bytes)
            if buf is None:
                break
            count += 1
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
        rc = proc.wait()
        if rc != 0:
            raise MediaError(path, "video decoding failed", drain.tail())
        tail = drain.tail()
        expected = info.duration * fps
        # A container's duration may include a longer audio track, so a short count alone is not an
        # error; a short count together with decoder errors is a truncated or corrupt file.
        if count == 0 or (tail.strip() and count < 0.9 * expected):
            raise MediaError(path, f"video is truncated or corrupt: decoded {count} of ~{expected:.0f} frames",
                             tail)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


def _read_exact(stream, n: int) -> bytes | None:
    """Read exactly n bytes; None at a clean end of stream."""
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None  # end of stream (a partial trailing frame is dropped)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


AUDIO_CHUNK_SAMPLES = 1 << 19  # ~33 s at 16 kHz (2 MiB of float32) per pipe read
_PREALLOC_MAX_SAMPLES = 1 << 27  # 512 MiB of float32 reserved up front at most (then grown)


def _audio_args(src: str, sample_rate: int) -> list[str]:
    return (
        ffmpeg.input(src)
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, vn=None, sn=None)
        .global_args("-hide_banner", "-nostdin", "-loglevel", "error")
        .compile(cmd=ffmpeg_exe())
    )


def iter_audio(path: str | Path, sample_rate: int = 16000, *, chunk_samples: int = AUDIO_CHUNK_SAMPLES,
               max_samples: int | None = None, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """Stream any audio ffmpeg reads as mono float32 chunks at `sample_rate`, through a pipe.

    Every chunk holds `chunk_samples` samples except the last (memory is one chunk, whatever the
    length of the file). With `max_samples`, decoding stops once more than `max_samples` samples
    came out: the chunks then hold exactly max_samples + 1 samples in total, which tells the
    caller the audio is too long without decoding the rest. Closing the generator early kills
    ffmpeg. InputError: no audio track, empty track, non-finite samples; MediaError: ffmpeg failed.
    """
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    src = _check_input_file(path)
    info = info or probe(src)
    if not info.has_audio:
        raise InputError(src, "has no audio track")
    limit = None if max_samples is None else max_samples + 1
    proc = subprocess.Popen(_audio_args(src, sample_rate), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    drain = _StderrDrain(proc.stderr)
    total = 0
    try:
        while limit is None or total < limit:
            want = chunk_samples if limit is None else min(chunk_samples, limit - total)
            chunk = np.empty(want, np.float32)
            got = _read_into(proc.stdout, memoryview(chunk).cast("B"))
            n = got // 4  # a partial trailing sample (never written by ffmpeg) is dropped
            if n == 0:
                break
            chunk = chunk[:n]
            if not np.isfinite(chunk).all():
                raise InputError(src, "audio contains non-finite samples")
            total += n
            yield chunk
            if got < want * 4:
                break  # end of stream
        if limit is not None and total >= limit:
            return  # too long: the finally clause stops ffmpeg
        if proc.wait() != 0:
            raise MediaError(src, "audio decoding failed", drain.tail())
        if total == 0:
            raise InputError(src, "audio track is empty (zero length)")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


def _read_into(stream, buf: memoryview) -> int:
    """Fill `buf` from `stream`; returns the bytes read (less than len(buf) only at end of stream)."""
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def read_audio(path: str | Path, sample_rate: int = 16000, *, max_samples: int | None = None,
               info: MediaInfo | None = None) -> np.ndarray:
    """Decode any audio ffmpeg reads (or a video's audio track) to mono float32 at `sample_rate`.

    The samples are read from ffmpeg in chunks straight into one array sized from the probed
    duration, so decoding holds one copy of the result (4 bytes per sample), not the pipe's
    bytes plus a copy. `max_samples` as in `iter_audio`: at most max_samples + 1 samples are
    decoded, so a result longer than `max_samples` means "too long".
    """
    src = _check_input_file(path)
    info = info or probe(src)
    expected = int(info.duration * sample_rate) + sample_rate  # headers may be a little short
    if max_samples is not None:
        expected = min(expected, max_samples + 1)
    expected = min(expected, _PREALLOC_MAX_SAMPLES)  # a header cannot make us reserve more
    wav = np.empty(max(expected, 1), np.float32)
    n = 0
    for chunk in iter_audio(src, sample_rate, max_samples=max_samples, info=info):
        if n + chunk.size > wav.size:  # the header under-stated the duration: grow geometrically
            wav = _grown(wav, n, max(n + chunk.size, wav.size + wav.size // 2))
        wav[n:n + chunk.size] = chunk
        n += chunk.size
    return _grown(wav, n, n)


def _grown(wav: np.ndarray, used: int, size: int) -> np.ndarray:
    """`wav[:used]` in an array of `size` samples (in place when the array owns its memory)."""
    try:
        wav.resize(size, refcheck=False)
        return wav
    except ValueError:
        out = np.empty(size, np.float32)
        out[:used] = wav[:used]
        return out


def write_wav(path: str | Path, wav: np.ndarray, sample_rate: int = 16000) -> None:
    """Write mono float32 samples as 16-bit PCM WAV (through ffmpeg, like every other write)."""
    args = (
        ffmpeg.input("pipe:", format="f32le", ac=1, ar=sample_rate)
        .output(str(path), acodec="pcm_s16le", ac=1, ar=sample_rate)
        .global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
        .compile(cmd=ffmpeg_exe())
    )
    proc = subprocess.run(args, input=np.ascontiguousarray(wav, np.float32).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise MediaError(path, "writing WAV failed", proc.stderr.decode("utf-8", "replace"))


# ---------------------------------------------------------------------------------------------
# encode


@dataclass(frozen=True)
class EncodeSettings:
    fps: int = 25
    crf: int = 20
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    audio_codec: str = "aac"
    audio_bitrate: str = "128k"
    threads: int = 0  # 0 = ffmpeg decides


class VideoWriter:
    """Stream (H, W, 3) uint8 BGR frames into ffmpeg -> H.264 mp4, audio muxed in the same pass.

    Use as a context manager; on an exception inside the block the encoder is killed and the
    partial file removed (the caller publishes the finished file atomically).
    """

    def __init__(self, path: str | Path, width: int, height: int, settings: EncodeSettings = EncodeSettings(),
                 audio: str | Path | None = None):
        self.path = str(path)
        self.width, self.height = width, height
        self.frames_written = 0
        video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{width}x{height}", r=settings.fps)
        if (width % 2 or height % 2) and settings.pix_fmt == "yuv420p":
            # 4:2:0 needs even sizes: pad one black column/row rather than scaling the picture
            video = video.filter("pad", width + width % 2, height + height % 2)
        out_kwargs = dict(vcodec="libx264", crf=settings.crf, preset=settings.preset, pix_fmt=settings.pix_fmt,
                          r=settings.fps, movflags="+faststart", format="mp4")
        if settings.threads:
            out_kwargs["threads"] = settings.threads
        if audio is not None:
            streams = [video, ffmpeg.input(str(audio)).audio]
            out_kwargs.update(acodec=settings.audio_codec, audio_bitrate=settings.audio_bitrate)
        else:
            streams = [video]
        args = (
            ffmpeg.output(*streams, self.path, **out_kwargs)
            .global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
            .compile(cmd=ffmpeg_exe())
        )
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = _StderrDrain(self._proc.stderr)

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame {frame.shape} {frame.dtype} != ({self.height}, {self.width}, 3) uint8")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            self._proc.wait()
            raise MediaError(self.path, "video encoding failed", self._drain.tail()) from None
        self.frames_written += 1

    def close(self) -> None:
        self._proc.stdin.close()
        rc = self._proc.wait()
        if rc != 0:
            raise MediaError(self.path, "video encoding failed", self._drain.tail())

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        Path(self.path).unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def concat_segments(segments: Sequence[str | Path], out: str | Path, audio: str | Path | None = None,
                    settings: EncodeSettings = EncodeSettings()) -> None:
    """Join H.264 segments in order with the concat demuxer (`-c copy`, no re-encode), muxing audio."""
    if not segments:
        raise ValueError("no segments to concatenate")
    out = Path(out)
    if any("\n" in str(s) or "\r" in str(s) for s in segments):
        raise ValueError("segment paths must not contain line breaks (ffmpeg concat lists are line based)")

    def quoted(path: str) -> str:  # the concat demuxer's quoting: ' is written as '\''
        return "'" + path.replace("'", "'\\''") + "'"

    # The list lives in a private temp dir, never beside `out`: a process killed mid-join leaves no
    # stray file among the published outputs.
    listing_dir = Path(tempfile.mkdtemp(prefix="lipsync-concat-"))
    listing = listing_dir / "segments.txt"
    listing.write_text("".join(f"file {quoted(Path(s).resolve().as_posix())}\n" for s in segments))
    try:
        video = ffmpeg.input(str(listing), format="concat", safe=0)
        if audio is not None:
            streams = [video.video, ffmpeg.input(str(audio)).audio]
            kwargs = dict(vcodec="copy", acodec=settings.audio_codec, audio_bitrate=settings.audio_bitrate)
        else:
            streams, kwargs = [video.video], dict(vcodec="copy")
        args = (
            ffmpeg.output(*streams, str(out), movflags="+faststart", format="mp4", **kwargs)
            .global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
            .compile(cmd=ffmpeg_exe())
        )
        _run(args, out, "concatenating segments failed")
    finally:
        shutil.rmtree(listing_dir, ignore_errors=True)


_FRAME_RE = re.compile(rb"frame=\s*(\d+)")


def count_video_frames(path: str | Path) -> int:
    """Count the video packets (= frames for H.264 in mp4) without decoding."""
    src = _check_input_file(path)
    args = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", src, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = _run(args, src, "counting frames failed")
    found = _FRAME_RE.findall(proc.stderr)
    return int(found[-1]) if found else 0


def read_image(path: str | Path) -> np.ndarray:
    """A still image (dataset and template JPEGs) as uint8 BGR (H, W, 3); InputError when unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(path, "image is missing or unreadable (not a JPEG/PNG)")
    return image
