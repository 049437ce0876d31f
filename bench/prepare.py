"""Prepare throughput (frames/s) on the real clips in ../shared/media.

    .venv/bin/python bench/prepare.py [--record]

Each clip is prepared into a fresh temp dir (decode at 25 fps, JPEG write, Face Mesh, smoothing,
boxes, mel, meta); frames/s = output frames / wall seconds of `prepare()`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, media_file, record_section  # noqa: E402

from lipsync.data.prepare import prepare  # noqa: E402
from lipsync.io import media  # noqa: E402

CLIPS = ("edtalk_uncrop_Obama.mp4", "sadtalker_WDA_KatieHill_000.mp4", "retalking_face_1.mp4",
         "edtalk_pose_source2.mp4", "latentsync_demo1_video.mp4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = parser.parse_args()
    rows = []
    for name in CLIPS:
        path = media_file(name)
        info = media.probe(path)
        work = Path(tempfile.mkdtemp(prefix="lipsync-bench-prepare-"))
        try:
            t0 = time.perf_counter()
            result = prepare(str(path), Path(name).stem, str(work / "ds"))
            seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append((name, f"{info.width}x{info.height}", info.video_codec, result.n_frames, f"{seconds:.1f}",
                     f"{result.n_frames / seconds:.1f}"))
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ("clip", "size", "codec", "frames", "seconds", "frames/s")
    table = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    table += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    print(table)
    if args.record:
        record_section("prepare (bench/prepare.py)",
                       f"Command: `{' '.join(sys.argv)}`\n\n{machine_line()}\n\n{table}")


if __name__ == "__main__":
    main()
