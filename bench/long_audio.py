"""Long audio: peak memory and time of validating, planning and rendering 10 s .. 4 h of audio.

    .venv/bin/python bench/long_audio.py [--hours 1,4] [--render] [--lipsync-root DIR] [--record]

Makes low-bitrate opus files of 1 h and 4 h by looping a real speech clip (cached), then runs
each case in a fresh Python process and reports its wall time and peak RSS (VmHWM, ffmpeg
children not included):

- reject: `load_audio` with the default max_audio_seconds (3600) on the 4 h file (should be
  refused before decoding, in well under a second);
- plan:   what planning an item does with the audio: `load_audio` + `audio_features` (mel +
  AudioEncoder, untrained weights) + np.save of the features;
- render (--render): `render_segment` of the item's last 250 frames with a tiny character, from
  the features of the whole item (memory must not depend on the item's length beyond them);
- whole (--whole 10,600): the whole `lipsync render` path (`render()`: decode, loudness, features,
  voice activity, every frame painted and encoded, the mux) of 10 s and 10 min of audio with the
  tiny character (issue 12: peak RSS for 10 min within 1.2x of 10 s).

`--lipsync-root DIR` runs the cases against another copy of the package (e.g. the previous
commit: `git archive HEAD lipsync | tar -x -C /tmp/head`), for before/after numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, REPO, machine_line, media_file, peak_rss_mb, record_section

SECTION = "Long audio: memory of validating and planning (bench/long_audio.py)"
SOURCE = "iplap_audio2.wav"  # 21 s of speech, looped
RENDER_FRAMES = 250


def long_opus(seconds: int) -> Path:
    """`seconds` of looped speech as 6 kb/s mono opus (1 h ~ 2.8 MB), made once into the cache."""
    from lipsync.io.media import ffmpeg_exe

    out = CACHE / f"long_{seconds}s.opus"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.opus")
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1",
                        "-i", str(media_file(SOURCE)), "-t", str(seconds), "-ac", "1", "-ar", "16000",
                        "-c:a", "libopus", "-b:a", "6k", str(tmp)], check=True)
        tmp.rename(out)
    return out


def _stub_character():
    """What audio_features reads of a character: its AudioConfig and AudioEncoder."""
    import torch

    from lipsync.config import AudioConfig
    from lipsync.models.audio_encoder import AudioEncoder

    class Stub:
        pass

    torch.manual_seed(0)
    c = Stub()
    c.audio = AudioConfig()
    c.audio_encoder = AudioEncoder().eval()
    return c


def run_case(case: str, audio: str, bundle: str | None) -> dict:
    """Inside the child process: run one case, return its numbers."""
    import numpy as np
    import torch

    from lipsync.config import RenderConfig
    from lipsync.errors import InputError
    from lipsync.render.pipeline import audio_features, load_audio

    torch.set_num_threads(2)
    cfg = RenderConfig(device="cpu")
    base_mb = peak_rss_mb()
    character = _stub_character()
    t0 = time.perf_counter()
    outcome = ""
    try:
        if case == "whole":  # the command's own path only (no decode of ours before it)
            from lipsync.render.pipeline import render

            with tempfile.TemporaryDirectory() as tmp:
                result = render(bundle, audio, str(Path(tmp) / "dub.mp4"), cfg)
            return {"seconds": time.perf_counter() - t0, "base_mb": base_mb,
                    "rss_mb": peak_rss_mb(),
                    "outcome": f"rendered {result.frames} frames"}
        wav = load_audio(audio, cfg, 16000)
        outcome = f"decoded {wav.size / 16000:.0f} s"
        if case in ("plan", "render"):
            if case == "render":
                from lipsync.bundle import load_character

                character = load_character(bundle, device="cpu")
            feats = audio_features(character, wav, cfg.feature_batch_size)
            del wav
            with tempfile.TemporaryDirectory() as tmp:
                with open(Path(tmp) / "feats.npy", "wb") as f:
                    np.save(f, feats)
            outcome += f", features {feats.shape[0]}x{feats.shape[1]}"
            if case == "render":
                from lipsync.render.pipeline import render_segment

                n = len(feats)
                with tempfile.TemporaryDirectory() as tmp:
                    stats = render_segment(character, feats, max(0, n - RENDER_FRAMES), n, Path(tmp) / "seg.mp4",
                                           cfg=cfg)
                outcome += f", rendered {stats.frames} frames"
    except InputError as e:
        outcome = f"InputError: {str(e).split(': ', 1)[-1][:60]}"
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb(),
            "base_mb": base_mb, "outcome": outcome}


def child(case: str, audio: Path, root: Path, bundle: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    args = [sys.executable, __file__, "--case", case, "--audio", str(audio)]
    if bundle:
        args += ["--bundle", bundle]
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} on {audio.name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_bundle() -> str:
    from common import bench_dataset

    from lipsync.bundle import save_bundle
    from lipsync.config import AudioConfig, GeometryConfig
    from lipsync.models import build_generator, build_syncnet
    from lipsync.models.audio_encoder import AudioEncoder

    out = CACHE / "bundle_long_audio_tiny"
    if not out.exists():
        save_bundle(str(out), name="bench", preset="tiny", generator=build_generator("tiny"),
                    audio_encoder=AudioEncoder(), syncnet=build_syncnet("tiny"), audio=AudioConfig(),
                    geometry=GeometryConfig(), dataset_dir=bench_dataset(), train_info={"steps": 0})
    return str(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hours", default="1,4", help="lengths of the long files (the reject case uses the longest)")
    p.add_argument("--render", action="store_true", help="also render the last 250 frames (prepares a dataset)")
    p.add_argument("--lipsync-root", default=str(REPO), help="directory holding the lipsync package to measure")
    p.add_argument("--whole", default="", help="seconds of audio for whole renders, e.g. 10,600 (tiny character)")
    p.add_argument("--record", action="store_true", help="record the table in docs/BENCHMARKS.md")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--audio", help=argparse.SUPPRESS)
    p.add_argument("--bundle", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.audio, args.bundle)))
        return 0
    root = Path(args.lipsync_root).resolve()
    hours = sorted(float(h) for h in args.hours.split(","))
    whole = [int(x) for x in args.whole.split(",") if x]
    only_whole = bool(whole) and not args.render  # --whole alone: just the whole renders
    files = {} if only_whole else {h: long_opus(int(h * 3600)) for h in hours}
    short = media_file(SOURCE)
    bundle = make_bundle() if args.render or whole else None
    cases = []
    if not only_whole:
        if hours[-1] * 3600 > 3600:
            cases.append(("reject", files[hours[-1]], f"{hours[-1]:g} h"))
        fits = [h for h in hours if h * 3600 <= 3600]
        cases += [("plan", short, "21 s")] + [("plan", files[h], f"{h:g} h") for h in fits]
        if args.render:
            cases += [("render", short, "21 s")] + [("render", files[h], f"{h:g} h") for h in fits]
    cases += [("whole", long_opus(n), f"{n} s") for n in whole]
    rows = ["| case | audio | wall s | peak RSS MB (after imports) | outcome |", "|---|---|---|---|---|"]
    print(f"lipsync from {root}")
    for case, audio, label in cases:
        r = child(case, audio, root, bundle)
        rows.append(f"| {case} | {label} ({audio.stat().st_size / 1e6:.1f} MB) | {r['seconds']:.1f} | "
                    f"{r['rss_mb']:.0f} ({r['base_mb']:.0f}) | {r['outcome']} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    print("\n" + table)
    if args.record:
        record_section(SECTION, f"{machine_line()}\n\nCommand: `python bench/long_audio.py {' '.join(sys.argv[1:])}`"
                                f"\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
