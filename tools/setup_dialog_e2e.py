"""The set-up from the dialog, as a user meets it, with screenshots for docs/ (issue 26).

    sudo python tools/setup_dialog_e2e.py [--base /opt/gimp3-root] [--shots docs] [--out docs/setup-dialog-e2e.txt]

The same throwaway root as tools/setup_e2e.py (an overlay on a Debian trixie root with GIMP 3, no
python3-venv, nothing of ours; the bundle unzipped into a fresh user's plug-ins folder; pip's network),
then GIMP's own window under Xvfb: a photo opened, Filters > FFCLIP Edit… run by the dialog's scripted
user (gimp/dialog.py `_Replay`): the engine is not there and nothing can start it, so the dialog
offers the set-up; the user presses it, ticks "Trial only", confirms; the set-up's steps show in the
dialog; at its end the engine answers, the user types a prompt and the preview appears. A screenshot
at each of these moments, and the dialog's own record of what it showed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ffclip.app.gimp_console import GimpConsole  # noqa: E402
from tests.support.gimp_gui import notes, run_gui  # noqa: E402
from tools.setup_e2e import PHOTO, Report, throwaway_root  # noqa: E402

AREA = [0, 0, 1600, 1000]


OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "1", "PIP_TIMEOUT": "5"}  # nobody answers


def shot(name: str) -> dict:
    return {"shot": f"setup-{name}.png", "area": AREA}


def offline_steps() -> list[dict]:
    """The first try without a network: it fails at PyTorch, says so, and Diagnose explains."""
    return [
        {"move": [1000, 40]},
        {"wait_engine": "none is set up", "timeout": 30},
        {"setup": True},
        {"sleep": 0.5},
        {"setup_answer": "tiny"},
        {"wait_engine": "failed at step", "timeout": 600},
        {"sleep": 1.0},
        {"note": "failed"},
        shot("failed"),
        {"close_text": True},
        {"diagnose": True},
        {"sleep": 6.0},
        {"note": "diagnose"},
        shot("diagnose"),
        {"close_text": True},
        {"cancel": True},
    ]


def steps() -> list[dict]:
    """Again with the network: it goes on where it stopped, and ends with a preview."""
    return [
        {"move": [1000, 40]},
        {"wait_engine": "none is set up", "timeout": 30},
        {"note": "offered"},
        shot("offered"),
        {"setup": True},
        {"sleep": 1.0},
        shot("confirm"),
        {"setup_answer": "tiny"},
        {"wait_engine": "step 4 of 7", "timeout": 120},
        {"sleep": 9.0},  # past the PyTorch index (out of reach here): pip downloading
        {"note": "torch"},
        shot("progress"),
        {"wait_engine": "step 5 of 7", "timeout": 1800},
        {"sleep": 2.0},
        {"note": "engine"},
        {"wait_engine": "ready", "timeout": 1800},
        {"note": "ready"},
        {"type": "smiling", "row": 0, "key_s": 0.05},
        {"wait_preview": True, "timeout": 300},
        {"note": "preview"},
        shot("done"),
        {"cancel": True},
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="/opt/gimp3-root", help="a Debian trixie root with GIMP 3 (never written)")
    parser.add_argument("--shots", default=str(REPO / "docs"), help="where the screenshots go")
    parser.add_argument("--out", default=str(REPO / "docs" / "setup-dialog-e2e.txt"), help="the report ('' = none)")
    parser.add_argument("--work", default="/var/tmp", help="where the throwaway root goes (torch: several GB)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for GIMP's run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (chroot, mount)")
    report = Report(Path(args.out) if args.out else None)
    report(f"# the set-up from FFCLIP Edit's dialog, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    ok = False
    with throwaway_root(Path(args.base), args.work, report) as made:
        gimp = made.gimp
        scratch = gimp.scratch()
        shutil.copyfile(PHOTO, scratch / PHOTO.name)
        photo = gimp.inside(scratch / PHOTO.name)
        offline = GimpConsole(gimp.command, gimp.root, gimp.home, {**gimp.extra_env, **OFFLINE})
        began = time.monotonic()
        _, failed, _ = run_gui(offline, photo, [{"steps": offline_steps()}], timeout=900, scratch=scratch)
        report(f"[{time.monotonic() - began:7.1f} s] GIMP's window, no network: the set-up fails, Diagnose")
        for label in ("failed", "diagnose"):
            note = notes(failed).get(label) or {}
            report(f"  {label:8s} engine: {note.get('engine')!r}  buttons: {note.get('actions')}")
            window = (note.get("text_window") or "").splitlines()
            report("           window: " + "\n           | ".join(window[:12]))
        shots = [r for r in failed if r.get("step") == "shot"]
        (scratch / "dialog.log").unlink()
        began = time.monotonic()
        state, records, scratch = run_gui(gimp, photo, [{"steps": steps()}], timeout=args.timeout, scratch=scratch)
        report(f"[{time.monotonic() - began:7.1f} s] GIMP's window: the dialog, the set-up, a preview")
        seen = notes(records)
        for label in ("offered", "torch", "engine", "ready", "preview"):
            note = seen.get(label) or {}
            report(f"  {label:8s} at {note.get('seconds', '?'):>7} s  engine: {note.get('engine')!r}")
            report(f"  {'':8s}             status: {note.get('status')!r}  buttons: {note.get('actions')}")
        for record in shots + records:
            if record.get("step") == "shot":
                name = Path(record["path"]).name
                shutil.copyfile(scratch / name, Path(args.shots) / f"gimp-{name}")
                report(f"  screenshot docs/gimp-{name}")
        preview = (seen.get("preview") or {}).get("preview") or {}
        said = (notes(failed).get("failed") or {}).get("engine") or ""
        ok = (
            said.startswith("The set-up failed at step")
            and (seen.get("offered") or {}).get("actions", [False])[0] is True
            and "ready" in str((seen.get("ready") or {}).get("engine"))
            and bool(preview.get("visible"))
        )
        report(f"  image after Cancel: {json.dumps(state.get('run0', {}).get('layers'))}")
        report("PASS: failed offline with its reason, set up from the dialog, a preview drawn" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
