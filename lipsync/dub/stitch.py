"""Stitch one item: its shard segments, in order, + its audio -> the published output video.

The segments are joined with ffmpeg's concat demuxer without re-encoding (`-c copy`) and the
item's original audio file is muxed in as AAC (the original, not the 16 kHz copy the model
heard, so the dub keeps the audio quality it was delivered in). The result is checked before it
is published: exactly one video frame per 1/fps of audio (n = ceil(duration * fps)), an audio
track, and a container duration within one video frame (+ one AAC frame of padding) of the
audio. A failed check publishes nothing.

The published file's size and sha256 are part of the result: the manifest records them, and a
re-run skips the item only when the file at the output still has them (plan.output_state).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lipsync.errors import MediaError
from lipsync.io import media, storage

# ffmpeg prints durations with two decimals; allow that rounding on top of the one-frame rule.
DURATION_ROUNDING_S = 0.01
# AAC codes audio in frames of 1024 samples; the muxed track may end up to one frame late.
AAC_FRAME_SAMPLES = 1024


@dataclass(frozen=True)
class StitchResult:
    output: str
    frames: int
    duration: float  # seconds, of the published file
    seconds: float  # time spent stitching
    size: int = 0  # bytes of the published file
    sha256: str = ""  # of the published file
    preview: str | None = None  # the item's preview PNG, when one was written (cluster.dub.stitch_one)
    mouth: dict | None = None  # mouth aperture vs the footage (lipsync.eval.aperture), when DubConfig.mouth_stats


def stitch_segments(segment_uris: list[str], audio_uri: str, out_uri: str, *, n_frames: int, audio_duration: float,
                    settings: media.EncodeSettings,
                    before_publish: Callable[[StitchResult], None] | None = None,
                    temp_dir: str | None = None) -> StitchResult:
    """Concatenate `segment_uris` (in this order) with `audio_uri` into `out_uri`, verified, atomically.

    Steps: (1) local copies of the segments and the audio, (2) concat -c copy + AAC into a temp
    file, (3) verify frame count and duration, hash it, (4) `before_publish(result)` (the caller
    records what is about to be published; raising there publishes nothing), (5) publish
    (storage.atomic_file). The segments are only read, never deleted. `temp_dir` (the item's work
    prefix in a batch job) holds the temp file, so a stitch killed mid-join leaves nothing among
    the outputs.
    """
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        # 1. local files (remote ones are downloaded to temp dirs removed on exit)
        missing = [u for u in segment_uris if not storage.exists(u)]
        if missing:
            raise FileNotFoundError(f"segment(s) missing: {', '.join(missing)}")
        segments = [stack.enter_context(storage.local_copy(u)) for u in segment_uris]
        audio = stack.enter_context(storage.local_copy(audio_uri))
        with storage.atomic_file(out_uri, temp_dir=temp_dir) as tmp:
            # 2. join
            media.concat_segments(segments, tmp, audio=audio, settings=settings)
            # 3. verify (raising here leaves nothing at out_uri)
            duration = verify_output(tmp, n_frames, audio_duration, settings.fps)
            result = StitchResult(out_uri, n_frames, duration, 0.0, size=Path(tmp).stat().st_size,
                                  sha256=storage.file_sha256(tmp))
            # 4. the caller's record of the publish
            if before_publish is not None:
                before_publish(result)
            # 5. publish on leaving the block
    return StitchResult(out_uri, n_frames, duration, time.perf_counter() - started, size=result.size,
                        sha256=result.sha256)


def verify_output(path: str | Path, n_frames: int, audio_duration: float, fps: int) -> float:
    """Check a stitched file against its audio; return its duration. MediaError on a mismatch."""
    frames = media.count_video_frames(path)
    if frames != n_frames:
        raise MediaError(path, f"stitched video has {frames} frames, expected {n_frames} "
                               f"(= ceil({audio_duration:.3f} s * {fps}))")
    info = media.probe(path)
    if not info.has_audio:
        raise MediaError(path, "stitched video has no audio track")
    tolerance = 1.0 / fps + AAC_FRAME_SAMPLES / max(info.audio_rate, 1) + DURATION_ROUNDING_S
    if abs(info.duration - audio_duration) > tolerance:
        raise MediaError(path, f"stitched video lasts {info.duration:.3f} s but the audio {audio_duration:.3f} s "
                               f"(allowed: one video frame + one AAC frame, {tolerance:.3f} s)")
    return info.duration
