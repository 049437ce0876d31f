#!/usr/bin/env bash
# CI: build the wheel, install it into a fresh venv, and run the `lipsync` command from there
# (issue 15, item 1): `--version`, `--help`, and a short prepare + render of a real clip.
#
# The fresh venv holds only the wheel (`pip install --no-deps`); the project's dependencies
# (torch, mediapipe, ... minutes to install) are borrowed from the main venv's site-packages through
# a .pth line. A .pth line only appends that directory to sys.path: the .pth files inside it (the
# editable install of lipsync among them) are not run, so `import lipsync` must come from the
# wheel; the script checks that. It runs from an empty temp dir, with no PYTHONPATH, so nothing
# beside the cwd (no configs/, no repo source) can stand in for the package data.
#
#   .ci/wheel_check.sh            # uses .venv (make venv first); ../shared/media for the clip
set -euo pipefail
fail() { echo "wheel check: FAILED: $*" >&2; exit 1; }
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
MEDIA="${MEDIA:-$REPO/../shared/media}"
CLIP_FRAMES="${CLIP_FRAMES:-50}"   # 2 s of the Obama clip
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
unset PYTHONPATH

echo "wheel check: building the wheel"
# With the venv's own setuptools (offline) when it has one; else pip's isolated build (PyPI).
ISOLATION="--no-build-isolation"
"$VENV/bin/python" -c "import setuptools" 2>/dev/null || ISOLATION=""
"$VENV/bin/python" -m pip wheel -q --no-deps $ISOLATION -w "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/lipsync-*.whl)"
# The wheel carries the default configs (package data) and the three packages.
"$VENV/bin/python" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = [f"lipsync/configs/{n}.yaml" for n in ("prepare", "train", "render", "dub", "eval", "models")]
need += ["lipsync_cli/main.py", "cluster/dub.py"]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
EOF

echo "wheel check: fresh venv"
"$VENV/bin/python" -m venv "$WORK/venv"
FRESH="$WORK/venv"
"$FRESH/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"
MAIN_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FRESH_SITE="$("$FRESH/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$MAIN_SITE" > "$FRESH_SITE/zz_borrowed_dependencies.pth"

mkdir "$WORK/run"
cd "$WORK/run"
"$FRESH/bin/python" - "$FRESH_SITE" "$REPO" <<'EOF'
import sys
from pathlib import Path
fresh, repo = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
import cluster, lipsync, lipsync_cli
for module in (lipsync, lipsync_cli, cluster):
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(fresh), f"{module.__name__} imported from {where}, not from the wheel in {fresh}"
assert not any(Path(p).resolve() == repo for p in sys.path if p), "the repo is on sys.path"
print("wheel check: lipsync imported from", Path(lipsync.__file__).parent)
EOF

LIPSYNC="$FRESH/bin/lipsync"
"$LIPSYNC" --version | tee "$WORK/version.txt"
grep -qx "lipsync 0.1.0" "$WORK/version.txt"
"$LIPSYNC" --help > "$WORK/help.txt"
grep -q "prepare" "$WORK/help.txt" && grep -q "render" "$WORK/help.txt"

if [ ! -f "$MEDIA/edtalk_uncrop_Obama.mp4" ]; then
  echo "wheel check: $MEDIA absent, prepare + render skipped"
  exit 0
fi

echo "wheel check: prepare + render a ${CLIP_FRAMES}-frame clip from the wheel"
# The clip and an untrained tiny bundle, made with the installed library (as tests/clips.py does).
"$FRESH/bin/python" - "$MEDIA/edtalk_uncrop_Obama.mp4" "$CLIP_FRAMES" <<'EOF'
import sys
from lipsync.io import media
source, frames = sys.argv[1], int(sys.argv[2])
media.write_wav("clip.wav", media.read_audio(source)[: frames * 16000 // 25])
with media.VideoWriter("clip.mp4", 450, 450, media.EncodeSettings(crf=12), audio="clip.wav") as w:
    for i, frame in enumerate(media.iter_video_frames(source)):
        if i == frames:
            break
        w.write(frame)
EOF
"$LIPSYNC" prepare clip.mp4 --name clip --out ds 2> prepare.err
cat prepare.err
if grep -E "XNNPACK|Feedback manager|GetPrototype|absl::InitializeLog" prepare.err; then
  echo "wheel check: third-party log lines reached the terminal" >&2
  exit 1
fi
"$FRESH/bin/python" - <<'EOF'
import torch
from lipsync.bundle import save_bundle
from lipsync.config import AudioConfig, GeometryConfig
from lipsync.models import build_generator, build_syncnet
from lipsync.models.audio_encoder import AudioEncoder
torch.manual_seed(0)
save_bundle("bundle", name="clip", preset="tiny", generator=build_generator("tiny"), audio_encoder=AudioEncoder(),
            syncnet=build_syncnet("tiny"), audio=AudioConfig(), geometry=GeometryConfig(), dataset_dir="ds",
            train_info={"steps": 0})
EOF
"$LIPSYNC" render --character bundle --audio clip.wav -o dub.mp4 --device cpu
"$FRESH/bin/python" - "$CLIP_FRAMES" <<'EOF'
import sys
from lipsync.io import media
frames = media.count_video_frames("dub.mp4")
assert frames == int(sys.argv[1]), f"dub.mp4 has {frames} frames, expected {sys.argv[1]}"
EOF
# (outputs go to files before grep: `grep -q` in a pipe may end the writer with SIGPIPE under pipefail)
"$LIPSYNC" info bundle > info.txt
grep -q "preset          tiny" info.txt || fail "lipsync info bundle: $(cat info.txt)"
"$LIPSYNC" info ds --json > info.json
"$FRESH/bin/python" -c "import json; assert json.load(open('info.json'))['frames'] == $CLIP_FRAMES" \
  || fail "lipsync info ds --json: $(cat info.json)"
# a missing --config file: exit 2 and one line naming it (not a packaged configs/foo.yaml)
rc=0
"$LIPSYNC" render --config foo --character bundle --audio clip.wav -o x.mp4 2> config.err || rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l < config.err)" -eq 1 ] && grep -q "^error: foo: cannot read config file" config.err \
  || fail "render --config foo: exit $rc, $(cat config.err)"
echo "wheel check: ok"
