"""`make demo`: the main job end to end on one machine, on an embedded local Ray.

    python jobs/demo.py --video talking_head.mp4 --audio speech.wav [--audio more.wav ...] -o demo_out

1. prepare the video into a dataset, 2. train the tiny preset briefly, 3. write a catalog of the
audio files and dub it with the Ray pipeline (cluster/dub.py), 4. print where the videos are.
Steps whose output already exists are reused, so a second `make demo` only dubs (and skips
what is done).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.dub import run_dub  # noqa: E402
from lipsync.config import DubConfig, PrepareConfig, TrainConfig, load_config  # noqa: E402
from lipsync.data.prepare import prepare  # noqa: E402
from lipsync.errors import InputError  # noqa: E402
from lipsync.train.api import train_character  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
DEFAULT_AUDIO = ("sadtalker_RD_Radio34_002.wav", "sadtalker_chinese_news.wav")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=str(MEDIA / "edtalk_uncrop_Obama.mp4"))
    parser.add_argument("--audio", action="append", help="audio to dub (repeatable); default: speech clips "
                                                         "from ../shared/media")
    parser.add_argument("-o", "--out", default="demo_out", help="dataset/, character/, dubs/ go here")
    parser.add_argument("--syncnet-steps", type=int, default=150, help="SyncNet steps (stage 1)")
    parser.add_argument("--steps", type=int, default=300, help="generator steps (stage 2), as lipsync train --steps")
    parser.add_argument("--generator-steps", dest="steps", type=int, help=argparse.SUPPRESS)  # older spelling
    return parser.parse_args(argv)


def write_catalog(path: Path, bundle: Path, audio_files: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "character", "audio"])
        for audio in audio_files:
            writer.writerow([Path(audio).stem, str(bundle.resolve()), str(Path(audio).resolve())])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    audio = args.audio or [str(MEDIA / name) for name in DEFAULT_AUDIO]
    dataset, bundle, catalog = out / "dataset", out / "character", out / "catalog.csv"
    try:
        if not dataset.exists():
            print(f"[1/3] prepare {args.video} -> {dataset}", flush=True)
            prepare(args.video, Path(args.video).stem, str(dataset), load_config(PrepareConfig))
        if not bundle.exists():
            print(f"[2/3] train tiny ({args.syncnet_steps} SyncNet + {args.steps} generator steps)",
                  flush=True)
            cfg = load_config(TrainConfig, flags={"preset": "tiny", "syncnet_steps": args.syncnet_steps,
                                                  "generator_steps": args.steps})
            train_character(str(dataset), str(bundle), cfg, overwrite=True)
        write_catalog(catalog, bundle, audio)
        print(f"[3/3] dub {len(audio)} audio file(s) on an embedded local Ray", flush=True)
        run = run_dub(str(catalog), str(out / "dubs"), load_config(DubConfig))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: videos in {out / 'dubs'}")
    return run.exit_code


if __name__ == "__main__":
    sys.exit(main())
