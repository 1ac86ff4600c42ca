"""`ffclip-engine invert-folder DIR -o latents.npy [--report R.json]`: a training set from photos.

Every face of every photo under DIR (sub-folders included) is detected, aligned as e4e expects and
inverted into W+; the codes go to one .npy array (N, n_latent, 512) float32, in file order, and
`latents.index.json` beside it says which photo and face each row is. Photos without a face and
files that cannot be read are reported (in the index and the report), never fatal.

Resumable: progress is kept in `latents.npy.partial/` (chunks of codes and a state file, written
every `--flush-every` photos), so an interrupted run picks up where it stopped. When the output and
its index already exist, a new run only inverts the photos that are new (or changed) since.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .report import write_json

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
STATE_VERSION = 1


# --- the encoder ----------------------------------------------------------------------------------


@dataclass
class Inverter:
    encoder: torch.nn.Module
    latent_avg: torch.Tensor
    device: torch.device
    signature: str  # which encoder: progress made with another one is not reused

    @torch.no_grad()
    def __call__(self, crops: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(self.device)
        return (self.encoder(x) + self.latent_avg).float().cpu().numpy()


def load_inverter(args: argparse.Namespace, device: torch.device) -> Inverter:
    if args.profile == "tiny" and not args.e4e:
        from ffclip.engine.inference import build_tiny
        from ffclip.engine.profiles import TINY

        nets = build_tiny(TINY)
        enc, avg, sig = nets.encoder, nets.latent_avg, "tiny"
    else:
        from ffclip.engine.checkpoints.layouts import read_e4e
        from ffclip.engine.models.e4e import Encoder4Editing

        path = Path(args.e4e) if args.e4e else None
        if path is None:
            from ffclip.engine.store import ModelStore

            store = ModelStore(args.models)
            path = store.path("e4e")
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: fetch it with `{store.fetch_hint} e4e` or give --e4e")
        sd, avg, size = read_e4e(path)
        enc = Encoder4Editing(stylegan_size=size)
        enc.load_state_dict(sd, strict=True)
        st = path.stat()
        sig = f"e4e:{path.name}:{st.st_size}"
    enc.eval().requires_grad_(False).to(device)
    return Inverter(enc, avg.to(device), device, sig)


# --- photos -----------------------------------------------------------------------------------------


def list_photos(folder: Path, exclude: set[Path]) -> tuple[list[str], int]:
    """Image files under `folder` (relative POSIX paths, sorted) and the count of other files."""
    photos, other = [], 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() not in exclude)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                photos.append(path.relative_to(folder).as_posix())
            else:
                other += 1
    return sorted(photos), other


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{int(st.st_mtime_ns)}"


# --- resumable state ----------------------------------------------------------------------------------


@dataclass
class State:
    signature: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath -> entry
    chunks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "signature": self.signature, "chunks": self.chunks, "entries": self.entries}


class Progress:
    """`OUT.partial/`: state.json + chunk_NNNNN.npy files of codes."""

    def __init__(self, output: Path, signature: str, restart: bool) -> None:
        self.output = output
        self.dir = output.with_name(output.name + ".partial")
        self.index_path = index_path(output)
        self.resumed_from = None
        if restart:
            shutil.rmtree(self.dir, ignore_errors=True)
        state = self._load(signature) if not restart else None
        if state is None and not restart:
            state = self._adopt_output(signature)
        self.state = state or State(signature)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pending_codes: list[np.ndarray] = []
        self.pending: dict[str, dict[str, Any]] = {}

    def _load(self, signature: str) -> State | None:
        path = self.dir / "state.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION or data.get("signature") != signature:
            raise ValueError(
                f"{self.dir} holds progress made with another encoder ({data.get('signature')}); "
                "use --restart to start over"
            )
        self.resumed_from = "partial"
        return State(signature, data["entries"], data["chunks"])

    def _adopt_output(self, signature: str) -> State | None:
        """A finished earlier run: keep its codes, invert only what is new."""
        if not (self.output.exists() and self.index_path.exists()):
            return None
        index = json.loads(self.index_path.read_text(encoding="utf-8"))
        if index.get("signature") != signature:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        os.replace(self.output, self.dir / "previous.npy")
        entries = {}
        for rel, entry in index.get("files", {}).items():
            entries[rel] = {**entry, "chunk": "previous.npy" if entry.get("rows") else None}
        self.resumed_from = "output"
        state = State(signature, entries, ["previous.npy"])
        self._write_state(state)
        return state

    def done(self, rel: str, key: str) -> bool:
        entry = self.state.entries.get(rel)
        return entry is not None and entry.get("key") == key

    def add(self, rel: str, entry: dict[str, Any], codes: np.ndarray | None) -> None:
        if codes is not None and len(codes):
            offset = sum(len(c) for c in self.pending_codes)
            self.pending_codes.append(codes)
            entry["rows"] = list(range(offset, offset + len(codes)))
        else:
            entry["rows"] = []
        self.pending[rel] = entry

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = None
        if self.pending_codes:
            chunk = f"chunk_{len(self.state.chunks):05d}.npy"
            tmp = self.dir / (chunk + ".tmp.npy")
            np.save(tmp, np.concatenate(self.pending_codes).astype(np.float32))
            os.replace(tmp, self.dir / chunk)
            self.state.chunks.append(chunk)
        for rel, entry in self.pending.items():
            self.state.entries[rel] = {**entry, "chunk": chunk if entry["rows"] else None}
        self._write_state(self.state)
        self.pending_codes, self.pending = [], {}

    def _write_state(self, state: State) -> None:
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(state.to_json()), encoding="utf-8")
        os.replace(tmp, self.dir / "state.json")

    def consolidate(self, photos: list[str], shape_tail: tuple[int, int]) -> tuple[int, dict[str, Any]]:
        """Write the output in file order (only photos still present) and its index; drop the progress."""
        self.flush()
        entries = {rel: self.state.entries[rel] for rel in photos if rel in self.state.entries}
        total = sum(len(e["rows"]) for e in entries.values())
        tmp = self.output.with_name(self.output.name + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, *shape_tail))
        chunks: dict[str, np.ndarray] = {}
        row = 0
        files: dict[str, Any] = {}
        faces: list[dict[str, Any]] = []
        for rel, entry in entries.items():
            rows = entry["rows"]
            new_rows = list(range(row, row + len(rows)))
            if rows:
                name = entry["chunk"]
                if name not in chunks:
                    chunks[name] = np.load(self.dir / name, mmap_mode="r")
                out[row : row + len(rows)] = chunks[name][rows]
                for k, r in enumerate(new_rows):
                    faces.append({"row": r, "file": rel, **entry["faces"][k]})
            row += len(rows)
            files[rel] = {k: v for k, v in entry.items() if k != "chunk"} | {"rows": new_rows}
        out.flush()
        del out, chunks
        os.replace(tmp, self.output)
        index = {
            "version": STATE_VERSION,
            "signature": self.state.signature,
            "rows": total,
            "faces": faces,
            "files": files,
        }
        write_json(self.index_path, index)
        shutil.rmtree(self.dir, ignore_errors=True)
        return total, index


def index_path(output: Path) -> Path:
    return output.with_name(output.stem + ".index.json")


# --- the command -------------------------------------------------------------------------------------


def invert_folder(args: argparse.Namespace) -> dict[str, Any]:
    from ffclip.engine.face.align import align_face
    from ffclip.engine.face.detect import FaceDetector
    from ffclip.engine.imageio import as_rgb8, load_image
    from ffclip.engine.inference import resolve_device
    from ffclip.plugin.protocol import EngineError

    folder: Path = args.dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    inverter = load_inverter(args, resolve_device(args.device))
    shape_tail = (
        int(inverter.latent_avg.shape[-2]) if inverter.latent_avg.ndim == 2 else inverter.encoder.style_count,
        int(inverter.latent_avg.shape[-1]),
    )
    progress = Progress(output, inverter.signature, args.restart)
    photos, other = list_photos(folder, {progress.dir.resolve()})
    todo = [rel for rel in photos if not progress.done(rel, _file_key(folder / rel))]
    detector = FaceDetector()

    bar = None
    try:
        from tqdm import tqdm
    except ImportError:  # open_clip brings it; without it, no bar
        tqdm = None
    if not args.no_progress and tqdm is not None:
        bar = tqdm(total=len(photos), initial=len(photos) - len(todo), desc="invert", unit="photo", dynamic_ncols=True)
    crops: list[np.ndarray] = []
    waiting: list[tuple[str, dict[str, Any], int]] = []  # photos whose faces wait in `crops`

    def run_batch() -> None:
        codes = inverter(crops) if crops else np.zeros((0, *shape_tail), np.float32)
        start = 0
        for rel, entry, count in waiting:
            progress.add(rel, entry, codes[start : start + count])
            start += count
        crops.clear()
        waiting.clear()

    since_flush = 0
    for rel in todo:
        path = folder / rel
        entry: dict[str, Any] = {"key": _file_key(path)}
        try:
            rgb = as_rgb8(load_image(path, args.max_pixels))
            faces = detector.detect(rgb)
        except EngineError as exc:
            faces = None
            entry.update(status="unreadable", reason=f"{exc.code}: {exc.message}")
        except Exception as exc:  # a decoder or detector failure on one photo must not end the run
            faces = None
            entry.update(status="unreadable", reason=f"{type(exc).__name__}: {exc}")
        if faces is not None and not faces:
            entry.update(status="no_face", reason="no face found")
        if faces:
            if args.faces == "largest":
                faces = [max(faces, key=lambda f: f.area)]
            entry.update(
                status="ok",
                faces=[
                    {"face": f.index, "box": [int(v) for v in f.box], "score": round(float(f.score), 4)} for f in faces
                ],
            )
            for f in faces:
                aligned, _ = align_face(rgb, f.quad, f.qsize, output_size=256)
                crops.append(aligned)
            waiting.append((rel, entry, len(faces)))
            if len(crops) >= args.batch_size:
                run_batch()
        else:
            waiting.append((rel, entry, 0))
        since_flush += 1
        if since_flush >= args.flush_every:
            run_batch()
            progress.flush()
            since_flush = 0
        if bar is not None:
            bar.update(1)
    run_batch()
    if bar is not None:
        bar.close()
    total, index = progress.consolidate(photos, shape_tail)
    files = index["files"]
    report = {
        "folder": str(folder),
        "output": str(output),
        "index": str(index_path(output)),
        "shape": [total, *shape_tail],
        "encoder": inverter.signature,
        "photos": len(photos),
        "photos_with_faces": sum(1 for e in files.values() if e.get("status") == "ok"),
        "faces": total,
        "inverted_this_run": len(todo),
        "reused": len(photos) - len(todo),
        "resumed_from": progress.resumed_from,
        "no_face": sorted(rel for rel, e in files.items() if e.get("status") == "no_face"),
        "unreadable": [
            {"file": rel, "reason": e.get("reason")} for rel, e in files.items() if e.get("status") == "unreadable"
        ],
        "other_files_ignored": other,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if args.report:
        write_json(args.report, report)
    return report
