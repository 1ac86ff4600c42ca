#!/usr/bin/env python3
"""Edit every photo of a folder with one prompt, through GIMP 3 and the FFCLIP Edit plug-in.

    ffclip-engine batch-edit PHOTOS/ "smiling, blond hair" -o EDITED/ [--edit "grey hair=1.2"]
    ffclip-engine batch-edit CHURCHES/ "a gothic cathedral" -o EDITED/ --domain church
    (or python3 app/batch_edit.py ... from a checkout)

Runs one `gimp-console-3.0 -i --batch-interpreter python-fu-eval -b - --quit` for the whole folder;
inside it, each file is opened, `python-fu-ffclip-edit` runs non-interactively on its (selected or
top) layer, and the result is exported to EDITED/<name>.png (or .xcf with --format xcf, keeping the
new layer and its mask). EDITED/status.tsv and EDITED/status.json record, per file, `ok` or `error`
with a readable message; the exit status is 1 when any file failed, 2 when GIMP itself could not run.

GIMP is found as: --gimp CMD / $FFCLIP_GIMP_CONSOLE (a native gimp-console-3.0), --gimp-root ROOT /
$FFCLIP_GIMP_ROOT (a Debian trixie chroot, see .ci/setup-gimp.sh), gimp-console-3.0 on PATH, or the
chroot at /opt/gimp3-root. The plug-in must be installed in that GIMP's profile
(`ffclip-engine install-gimp-plugin`, or --install-plugin here). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ffclip.app.gimp_console import GimpConsole, clean_log

PROCEDURE = "python-fu-ffclip-edit"
STATUS_MARK = "FFCLIP-BATCH "


# --------------------------------------------------------------------------- the GIMP-side driver

DRIVER = r"""
import json, os, traceback
import gi
gi.require_version("Gimp", "3.0")
from gi.repository import Gimp, Gio

JOB = json.loads(__JOB__)


def emit(**record):
    with open(JOB["status"], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def edit_one(proc, src, dst):
    try:
        image = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(src))
    except Exception as exc:
        return "error", "GIMP cannot open this file (%s)" % (str(exc).strip() or "not an image")
    if image is None:
        detail = Gimp.get_pdb().get_last_error() or ""
        return "error", "GIMP cannot open this file" + (" (%s)" % detail.strip() if detail.strip() else "")
    try:
        layers = image.get_selected_layers() or image.get_layers()
        if not layers:
            return "error", "the image has no layer"
        had_alpha = layers[0].has_alpha()
        cfg = proc.create_config()
        cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
        cfg.set_property("image", image)
        cfg.set_core_object_array("drawables", [layers[0]])
        for key, value in JOB["args"].items():
            cfg.set_property(key, value)
        result = proc.run(cfg)
        status = result.index(0)
        if status != Gimp.PDBStatusType.SUCCESS:
            message = ""
            if result.length() > 1:
                message = str(result.index(1) or "")
            message = message or Gimp.get_pdb().get_last_error() or str(status)
            return ("cancelled" if status == Gimp.PDBStatusType.CANCEL else "error"), message
        if JOB["flatten"] and not had_alpha:
            image.flatten()
        if not Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, image, Gio.File.new_for_path(dst), None):
            return "error", "export to %s failed: %s" % (dst, Gimp.get_pdb().get_last_error())
        return "ok", ""
    finally:
        image.delete()


proc = Gimp.get_pdb().lookup_procedure(JOB["procedure"])
for item in JOB["files"]:
    if proc is None:
        emit(file=item["name"], status="error", message="the FFCLIP Edit plug-in is not installed in "
             "this GIMP (run: ffclip-engine install-gimp-plugin)", output="")
        continue
    try:
        status, message = edit_one(proc, item["src"], item["dst"])
    except Exception as exc:
        status, message = "error", "%s: %s" % (type(exc).__name__, exc)
    emit(file=item["name"], status=status, message=message, output=item["out"] if status == "ok" else "")
emit(done=True)
"""


def driver_code(job: dict) -> str:
    return DRIVER.replace("__JOB__", repr(json.dumps(job)))


# --------------------------------------------------------------------------- batch


def list_inputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def output_names(files: list[Path], fmt: str) -> dict[Path, str]:
    """<stem>.<fmt>, or <name>.<fmt> when two inputs share a stem."""
    stems: dict[str, int] = {}
    for f in files:
        stems[f.stem] = stems.get(f.stem, 0) + 1
    return {f: (f.stem if stems[f.stem] == 1 else f.name) + "." + fmt for f in files}


def run_batch(
    folder: Path,
    prompt: str,
    out_dir: Path,
    console: GimpConsole,
    args: dict,
    fmt: str = "png",
    timeout: float = 3600.0,
    log=print,
) -> tuple[int, list[dict]]:
    """Edit every file of `folder`; returns (exit status, per-file records)."""
    files = list_inputs(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not files:
        log(f"no files in {folder}")
        _write_status(out_dir, [])
        return 0, []
    names = output_names(files, fmt)
    scratch = console.scratch()
    try:
        in_dir, res_dir = scratch / "in", scratch / "out"
        in_dir.mkdir()
        res_dir.mkdir()
        items = []
        for i, f in enumerate(files):
            if console.root is not None:  # GIMP sees only the chroot: copy the inputs in
                src = in_dir / f"{i:05d}{f.suffix}"
                shutil.copyfile(f, src)
                src_inside = console.inside(src)
            else:
                src_inside = str(f.resolve())
            items.append(
                {
                    "name": f.name,
                    "src": src_inside,
                    "dst": console.inside(res_dir / names[f]),
                    "out": names[f],
                }
            )
        status_file = scratch / "status.jsonl"
        job = {
            "procedure": PROCEDURE,
            "status": console.inside(status_file),
            "files": items,
            "args": {"prompt": prompt, **args},
            "flatten": fmt != "xcf",
        }
        started = time.monotonic()
        try:
            proc = console.run_python(driver_code(job), timeout=timeout)
            gimp_log = clean_log(proc.stdout + "\n" + proc.stderr)
        except subprocess.TimeoutExpired:
            gimp_log = f"GIMP did not finish within {timeout:g} s"
        except OSError as exc:
            gimp_log = f"GIMP could not be started: {exc}"
        records = _read_status(status_file)
        done = any(r.get("done") for r in records)
        by_name = {r["file"]: r for r in records if "file" in r}
        results = []
        for f in files:
            rec = by_name.get(f.name) or {
                "file": f.name,
                "status": "error",
                "message": "not processed: GIMP stopped before this file"
                + (f" ({gimp_log[-300:]})" if gimp_log else ""),
                "output": "",
            }
            if rec["status"] == "ok":
                shutil.copyfile(res_dir / rec["output"], out_dir / rec["output"])
            results.append(rec)
        _write_status(out_dir, results)
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed = [r for r in results if r["status"] != "ok"]
    for r in results:
        line = f"{r['status']:9} {r['file']}"
        line += f" -> {out_dir / r['output']}" if r["status"] == "ok" else f": {r['message']}"
        log(line)
    summary = f"{len(results) - len(failed)} edited, {len(failed)} failed in {elapsed:.1f} s"
    log(f"{summary}; status in {out_dir / 'status.tsv'}")
    if not done and not records:
        log("GIMP output:\n" + (gimp_log or "(none)"))
        return 2, results
    return (1 if failed else 0), results


def _read_status(path: Path) -> list[dict]:
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return records
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _write_status(out_dir: Path, results: list[dict]) -> None:
    (out_dir / "status.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with open(out_dir / "status.tsv", "w", encoding="utf-8") as f:
        f.write("file\tstatus\toutput\tmessage\n")
        for r in results:
            message = " ".join(str(r.get("message", "")).split())
            f.write(f"{r['file']}\t{r['status']}\t{r.get('output', '')}\t{message}\n")


def install_plugin(console: GimpConsole, url: str | None) -> None:
    try:
        from ffclip.app import install
    except ImportError:
        raise SystemExit("--install-plugin needs the project installed: pip install '.[dev]'") from None
    given = {"url": url} if url else {}
    print(f"installed {install.install(console.plugin_dir(), given)}")


def procedure_args(args: argparse.Namespace) -> dict:
    """The plug-in procedure's arguments (besides the prompt) for the command line's options."""
    faces = args.faces.strip().lower()
    proc_args: dict = {"strength": args.strength, "output": args.output}
    if args.edit:
        proc_args["more-edits"] = "\n".join(args.edit)
    if faces in ("all", "largest"):
        proc_args["faces"] = faces
    elif faces.isdigit():
        proc_args.update({"faces": "index", "face-index": int(faces)})
    else:
        raise ValueError("--faces must be all, largest or a face number")
    if args.domain != "face":  # a face batch sends what it always sent (older plug-ins lack the argument)
        if faces != "all":
            raise ValueError(f"--faces chooses faces; a {args.domain} edit takes the selection or the whole layer")
        proc_args["domain"] = args.domain
    if getattr(args, "fidelity", "standard") != "standard":  # likewise: sent only when asked for
        proc_args["fidelity"] = args.fidelity
    if args.url:
        proc_args["engine-url"] = args.url
    return proc_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of photos (every file in it is tried)")
    parser.add_argument("prompt", help='the edit, e.g. "smiling, blond hair"')
    parser.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    parser.add_argument("--strength", type=float, default=1.0, help="0..2 (default 1)")
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="PROMPT=STRENGTH",
        help='a further attribute edited at once, e.g. --edit "grey hair=1.2" (up to three)',
    )
    parser.add_argument("--faces", default="all", help="all, largest or a face number (default all)")
    parser.add_argument(
        "--domain",
        choices=("face", "car", "church"),
        default="face",
        help="what to edit: faces (default), or a car / church: the layer's selection, or the whole layer",
    )
    parser.add_argument(
        "--fidelity",
        choices=("standard", "high"),
        default="standard",
        help="standard (e4e, default) or high: HyperStyle's inversion keeps the person (slower the first time "
        "per photo; the engine needs `ffclip-engine models fetch high`; the plug-in's procedure must offer "
        "the argument)",
    )
    parser.add_argument("--output", choices=("layer-mask", "layer"), default="layer-mask")
    parser.add_argument("--format", choices=("png", "xcf", "jpg"), default="png", help="output format")
    parser.add_argument("--url", help="engine URL (default: the plug-in's saved setting)")
    parser.add_argument("--gimp", help="gimp-console-3.0 command (native)")
    parser.add_argument("--gimp-root", help="trixie chroot holding GIMP 3 (e.g. /opt/gimp3-root)")
    parser.add_argument("--gimp-home", help="HOME for GIMP (inside the chroot for --gimp-root)")
    parser.add_argument("--install-plugin", action="store_true", help="install the plug-in into that GIMP first")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole folder")


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"batch-edit: {args.folder} is not a folder", file=sys.stderr)
        return 2
    try:
        proc_args = procedure_args(args)
    except ValueError as exc:
        print(f"batch-edit: {exc}", file=sys.stderr)
        return 2
    try:
        console = GimpConsole.find(args.gimp, args.gimp_root, args.gimp_home)
        if args.install_plugin:
            install_plugin(console, args.url)
    except (FileNotFoundError, OSError) as exc:
        print(f"batch-edit: {exc}", file=sys.stderr)
        return 2
    status, _ = run_batch(args.folder, args.prompt, args.out, console, proc_args, args.format, args.timeout)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="batch_edit.py", description="Edit every photo of a folder with FFCLIP Edit in GIMP 3."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
