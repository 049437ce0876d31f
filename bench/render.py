"""Render speed: model-only vs end-to-end frames/s per preset and batch size, and the naive loop.

    .venv/bin/python bench/render.py [--frames 48] [--presets tiny,st2d-160,st2d-328]
                                     [--batch-sizes 1,8,32] [--record]

Model weights are random (speed does not depend on training). The naive loop mimics the seed's
inference: batch 1, default memory format, one JPEG read per frame, frames written to a temporary
MJPG file with OpenCV, then re-encoded with ffmpeg together with the audio.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_dataset, machine_line, record_section, speech_path  # noqa: E402

from lipsync.audio.features import context_range  # noqa: E402
from lipsync.bundle import load_character, save_bundle  # noqa: E402
from lipsync.config import AudioConfig, GeometryConfig, RenderConfig  # noqa: E402
from lipsync.data.inputs import generator_input, to_image  # noqa: E402
from lipsync.face import geometry  # noqa: E402
from lipsync.io import media  # noqa: E402
from lipsync.models import build_generator, build_syncnet  # noqa: E402
from lipsync.models.audio_encoder import AudioEncoder  # noqa: E402
from lipsync.render.pipeline import audio_features, prepare_for_inference, render_segment  # noqa: E402


def make_character(preset: str, dataset: Path, root: Path):
    out = root / f"bundle_{preset}"
    if not out.exists():
        torch.manual_seed(0)
        save_bundle(str(out), name="bench", preset=preset, generator=build_generator(preset),
                    audio_encoder=AudioEncoder(), syncnet=build_syncnet(preset), audio=AudioConfig(),
                    geometry=GeometryConfig(), dataset_dir=str(dataset), train_info={"steps": 0})
    return load_character(str(out), device="cpu")


def model_only_fps(character, feats: np.ndarray, frames: int, batch: int, channels_last: bool,
                   precision: str = "auto", backend: str = "torch") -> float:
    """Generator forwards alone on ready-made inputs (the same inputs render would build), through
    render's own `paint` (precision, memory format)."""
    from lipsync.render.paint import paint

    s = character.size
    x = np.random.default_rng(0).random((batch, 6, s, s), dtype=np.float32)
    audio = context_range(feats, 0, batch, character.audio)  # (B, 32, 16, 16)
    cfg = RenderConfig(batch_size=batch, device="cpu", precision=precision, channels_last=channels_last,
                       backend=backend)
    paint(character, x, audio, cfg)  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < frames:
        paint(character, x, audio, cfg)
        done += batch
    return done / (time.perf_counter() - t0)


def end_to_end_fps(character, feats: np.ndarray, frames: int, batch: int, out: Path, precision: str = "auto",
                   x264_threads: int = 0, backend: str = "torch") -> float:
    cfg = RenderConfig(batch_size=batch, device="cpu", precision=precision, x264_threads=x264_threads,
                       backend=backend)
    n = max(frames, batch)
    render_segment(character, feats, 0, min(batch, len(feats)), out, cfg=cfg)  # warm-up
    stats = render_segment(character, feats, 0, n, out, cfg=cfg)
    return stats.frames / stats.seconds


def naive_loop_fps(character, feats: np.ndarray, frames: int, audio: Path, work: Path) -> float:
    """The seed's loop: per frame read JPEG, crop, forward at batch 1, paste, MJPG; then re-encode."""
    from lipsync.audio.features import context_stack

    generator = character.generator.to(memory_format=torch.contiguous_format)
    avi, mp4 = work / "naive.avi", work / "naive.mp4"
    w, h = character.frame_size
    m, s = character.margin, character.size
    t0 = time.perf_counter()
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 25, (w, h))
    for k in range(frames):
        t = geometry.bounce(k, character.n_templates)
        frame = cv2.imread(str(character.template_path(t)))
        crop_full = geometry.crop(frame, character.boxes[t], s + 2 * m)
        face = geometry.inner(crop_full, m)
        x = torch.from_numpy(generator_input(face, face, character.geometry))[None]
        a = torch.from_numpy(context_stack(feats, k, character.audio))[None]
        with torch.no_grad():
            y = generator(x, a)[0].numpy()
        crop_full = crop_full.copy()
        crop_full[m:m + s, m:m + s] = to_image(y)
        writer.write(geometry.paste_back(frame, character.boxes[t], crop_full, character.geometry))
    writer.release()
    subprocess.run([media.ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(avi), "-i", str(audio),
                    "-c:v", "libx264", "-crf", "20", "-c:a", "aac", "-shortest", str(mp4)], check=True)
    elapsed = time.perf_counter() - t0
    generator.to(memory_format=torch.channels_last)
    return frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--presets", default="tiny,st2d-160,st2d-328")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--precisions", default="fp32,bf16", help="paths to compare (auto = what render picks)")
    parser.add_argument("--x264-threads", default="0", help="encoder threads per segment to compare (0 = ffmpeg's)")
    parser.add_argument("--backends", default="torch", help="generator backends to compare (torch, openvino)")
    parser.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-render-"))
    dataset = bench_dataset()
    audio = speech_path()
    rows = []
    header = ("preset", "backend", "precision", "batch", "x264 threads", "model-only f/s", "end-to-end f/s", "e2e/model",
              "naive f/s", "e2e vs naive")
    for preset in args.presets.split(","):
        character = make_character(preset, dataset, work)
        prepare_for_inference(character, RenderConfig())
        feats = audio_features(character, media.read_audio(audio))
        naive = naive_loop_fps(character, feats, min(args.frames, 24), audio, work)
        for backend, precision in itertools.product(args.backends.split(","), args.precisions.split(",")):
            prepare_for_inference(character, RenderConfig(device="cpu", precision=precision, backend=backend))
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                n = max(args.frames, batch)
                model = model_only_fps(character, feats, n, batch, channels_last=True, precision=precision,
                                       backend=backend)
                for threads in (int(t) for t in args.x264_threads.split(",")):
                    e2e = end_to_end_fps(character, feats, n, batch, work / f"{preset}_{batch}.mp4", precision,
                                         threads, backend)
                    rows.append((preset, backend, precision, batch, threads or "auto", f"{model:.2f}", f"{e2e:.2f}",
                                 f"{e2e / model:.0%}", f"{naive:.2f}", f"{e2e / naive:.2f}x"))
                    print(" | ".join(str(c) for c in rows[-1]), flush=True)
    table = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    table += "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)
    print(table)
    if args.record:
        record_section("render (bench/render.py)", f"`{' '.join(sys.argv)}` ({args.frames} frames per measurement, torch threads "
                                 f"{torch.get_num_threads()})\n\n{machine_line()}\n\n{table}")


if __name__ == "__main__":
    main()
