#!/usr/bin/env bash
# Release check (issue 26): what CI does not do because it needs torch in a fresh venv (several GB).
# Run from the repository root before each release; keep its output in docs/release-check.txt:
#
#     bash tools/release_check.sh 2>&1 | tee docs/release-check.txt
#
# 1. `python -m build`: the wheel and the sdist; `twine check` on both.
# 2. A clean venv (no dev extras, nothing of the checkout on sys.path): `pip install` the wheel alone.
# 3. From that venv: `ffclip-engine --version`, `ffclip-engine serve --profile tiny`, an edit of a
#    test photo through that daemon (`ffclip-engine edit --url`), then the daemon stopped.
# 4. `ffclip-engine gimp-bundle --wheel` from that venv: the GIMP bundle made by the installed package.
# Each step prints its wall-clock time. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ffclip-release.XXXXXX")
SERVE_PID=""
cleanup() {
    if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step_start=0
step() { step_start=$(date +%s.%N); echo; echo "== $*"; }
took() { printf -- "-- %.1f s\n" "$(echo "$(date +%s.%N) - $step_start" | bc)"; }

echo "release check of ffclip-edit at $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?')," \
    "$(date -u +%Y-%m-%dT%H:%MZ), $("$PYTHON" --version), $(uname -sm)"

step "build the sdist and the wheel (python -m build) from a clean copy of the checkout"
# git's tracked and unignored files: a build in the checkout would also read leftover egg-info.
mkdir "$WORK/src"
git ls-files -z -c -o --exclude-standard | "$PYTHON" -c '
import pathlib, shutil, sys
for name in sys.stdin.buffer.read().decode().split("\0"):
    if name and pathlib.Path(name).is_file():
        (pathlib.Path(sys.argv[1]) / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(name, pathlib.Path(sys.argv[1]) / name)
' "$WORK/src"
"$PYTHON" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist" | sed 1d | awk '{print $5, $9}'
took

step "twine check --strict"
"$PYTHON" -m twine --no-color check --strict "$WORK/dist"/*
took

WHEEL=$(ls "$WORK/dist"/ffclip_edit-*-py3-none-any.whl)
step "a clean venv, then pip install $(basename "$WHEEL") (no extras)"
"$PYTHON" -m venv "$WORK/venv"
VENV="$WORK/venv/bin"
# PYTHONPATH and the checkout stay out: run from the work folder with a clean environment.
cd "$WORK"
env -u PYTHONPATH "$VENV/python" -m pip install --quiet "$WHEEL" >"$WORK/pip.log" 2>&1 \
    || { tail -30 "$WORK/pip.log"; exit 1; }
"$VENV/python" -c "import torch, ffclip.engine as e, ffclip.app.cli; print('torch', torch.__version__, '| ffclip', e.__version__, '| from', e.__file__)"
du -sh "$WORK/venv" | awk '{print "venv size", $1}'
took

step "ffclip-engine --version (the venv's console script)"
env -u PYTHONPATH "$VENV/ffclip-engine" --version
took

step "ffclip-engine serve --profile tiny --port 0, then an edit through it"
env -u PYTHONPATH "$VENV/ffclip-engine" serve --profile tiny --port 0 --log-file "$WORK/serve.log" >"$WORK/serve.out" 2>&1 &
SERVE_PID=$!
URL=""
for _ in $(seq 1 600); do
    URL=$(grep -o 'listening on ws://[^ ]*' "$WORK/serve.out" | head -1 | sed 's/listening on //') || true
    [ -n "$URL" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$WORK/serve.out"; exit 1; }
    sleep 0.2
done
[ -n "$URL" ] || { echo "serve did not say where it listens"; cat "$WORK/serve.out"; exit 1; }
echo "daemon listening on $URL"
took
step "ffclip-engine edit obama.jpg 'smiling' --url $URL (through the daemon)"
env -u PYTHONPATH "$VENV/ffclip-engine" edit "$ROOT/tests/data/photos/obama.jpg" "smiling" -o "$WORK/edited.png" --url "$URL"
"$VENV/python" -c "from PIL import Image; im = Image.open('$WORK/edited.png'); print('edited.png', im.size, im.mode)"
took
kill "$SERVE_PID"
wait "$SERVE_PID" 2>/dev/null || true
SERVE_PID=""

step "ffclip-engine gimp-bundle from the installed package (--wheel: no checkout to build from)"
env -u PYTHONPATH "$VENV/ffclip-engine" gimp-bundle -o "$WORK/ffclip-edit-gimp.zip" --gex "$WORK/ffclip-edit.gex" \
    --wheel "$WHEEL"
ls -l "$WORK/ffclip-edit-gimp.zip" "$WORK/ffclip-edit.gex" | awk '{print $5, $9}' | sed "s|$WORK/||"
"$VENV/python" - "$WORK/ffclip-edit-gimp.zip" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
print(f"{len(names)} entries; those outside ffclip-edit/ffclip/:")
print(*[f"  {n}" for n in names if "/ffclip/" not in n], sep="\n")
EOF
took

echo
echo "release check passed"
