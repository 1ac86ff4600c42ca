"""`ffclip-engine invert-folder DIR -o latents.npy [--report R.json]`: a training set from photos.

Every face of every photo under DIR (sub-folders included) is detected, aligned as e4e expects and
inverted into W+; the codes go to one .npy array (N, n_latent, 512) float32, in file order, and
`latents.index.json` beside it says which photo and face each row is. Photos without a face and
files that cannot be read are reported (in the index and the report), never fatal.

Resumable: progress is kept in `latents.npy.partial/` (chunks of codes and a state file, written
every `--flush-every` photos), so an interrupted run picks up where it stopped. When the output and
its index already exist, a new run only inverts the photos that are new (or changed) since.

Under torchrun each rank inverts its share of the photos left (round-robin) into its own progress
folder, and rank 0 merges them all in file order: the output is the single-process one. Reading,
detection and alignment run in worker processes (photos.py).
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

from . import ddp
from .ddp import DistInfo
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
#
# `OUT.partial/` holds one folder per writer, each with its own state.json and chunk_NNNNN.npy files
# (a "part"): `rankNNNNN/` for each torchrun rank (rank00000 alone in a single process) and
# `previous/` for the codes of an earlier finished run. One writer per folder, so ranks never race;
# a rank of a later run continues its own folder, and the parts of ranks that a later run does not
# have (fewer processes) are still read. The output is merged from all parts in file order.


@dataclass
class State:
    signature: str
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # relpath -> entry
    chunks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "signature": self.signature, "chunks": self.chunks, "entries": self.entries}


def read_state(folder: Path, signature: str) -> State | None:
    path = folder / "state.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read ({exc}); use --restart to start over") from None
    if data.get("version") != STATE_VERSION or data.get("signature") != signature:
        raise ValueError(
            f"{folder} holds progress made with another encoder ({data.get('signature')}); use --restart to start over"
        )
    return State(signature, data["entries"], data["chunks"])


def write_state(folder: Path, state: State) -> None:
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state.to_json()), encoding="utf-8")
    os.replace(tmp, folder / "state.json")


def rank_part(rank: int) -> str:
    return f"rank{rank:05d}"


class Part:
    """One writer's progress: codes are collected, then written as a chunk with the state."""

    def __init__(self, folder: Path, signature: str) -> None:
        self.dir = folder
        self.state = read_state(folder, signature) or State(signature)
        self.pending_codes: list[np.ndarray] = []
        self.pending: dict[str, dict[str, Any]] = {}

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
        self.dir.mkdir(parents=True, exist_ok=True)
        chunk = None
        if self.pending_codes:
            chunk = f"chunk_{len(self.state.chunks):05d}.npy"
            tmp = self.dir / (chunk + ".tmp.npy")
            np.save(tmp, np.concatenate(self.pending_codes).astype(np.float32))
            os.replace(tmp, self.dir / chunk)
            self.state.chunks.append(chunk)
        for rel, entry in self.pending.items():
            self.state.entries[rel] = {**entry, "chunk": chunk if entry["rows"] else None}
        write_state(self.dir, self.state)
        self.pending_codes, self.pending = [], {}


@dataclass
class Plan:
    """What rank 0 found: every photo with its file key, what is left to invert, where it resumed."""

    photos: dict[str, str]  # relpath -> file key, in file order
    todo: list[tuple[str, str]]
    other_files: int
    resumed_from: str | None


class Progress:
    """`OUT.partial/`: the parts of every writer so far, merged; the output made from them."""

    def __init__(self, output: Path, signature: str) -> None:
        self.output = output
        self.signature = signature
        self.dir = output.with_name(output.name + ".partial")
        self.index_path = index_path(output)

    def parts(self) -> list[Path]:
        """Folders with a state: the writers' folders, and `OUT.partial/` itself when it holds a
        single process's progress in the layout before parts."""
        if not self.dir.is_dir():
            return []
        subdirs = sorted(p for p in self.dir.iterdir() if p.is_dir() and (p / "state.json").exists())
        return ([self.dir] if (self.dir / "state.json").exists() else []) + subdirs

    def entries(self) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
        """relpath -> (part folder, entry) for every part that has the photo."""
        merged: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
        for part in self.parts():
            state = read_state(part, self.signature)
            assert state is not None
            for rel, entry in state.entries.items():
                merged.setdefault(rel, []).append((part, entry))
        return merged

    def plan(self, folder: Path, restart: bool) -> Plan:
        """Rank 0, before any rank writes: start over, or adopt an earlier output; what is left."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        resumed_from = None
        if restart:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.parts():
            resumed_from = "partial"
        elif self._adopt_output():
            resumed_from = "output"
        merged = self.entries()
        photos_list, other = list_photos(folder, {self.dir.resolve()})
        photos = {rel: _file_key(folder / rel) for rel in photos_list}
        todo = [(rel, key) for rel, key in photos.items() if _pick(merged.get(rel, []), key) is None]
        return Plan(photos, todo, other, resumed_from)

    def _adopt_output(self) -> bool:
        """A finished earlier run: keep its codes (as the part `previous/`), invert only what is new."""
        if not (self.output.exists() and self.index_path.exists()):
            return False
        index = json.loads(self.index_path.read_text(encoding="utf-8"))
        if index.get("signature") != self.signature:
            return False
        part = self.dir / "previous"
        part.mkdir(parents=True, exist_ok=True)
        os.replace(self.output, part / "codes.npy")
        entries = {}
        for rel, entry in index.get("files", {}).items():
            entries[rel] = {**entry, "chunk": "codes.npy" if entry.get("rows") else None}
        write_state(part, State(self.signature, entries, ["codes.npy"]))
        return True

    def consolidate(self, photos: dict[str, str], shape_tail: tuple[int, int]) -> tuple[int, dict[str, Any]]:
        """Write the output in file order (only photos still present) and its index from every
        part; drop the progress."""
        merged = self.entries()
        picked: dict[str, tuple[Path, dict[str, Any]]] = {}
        for rel, key in photos.items():
            found = _pick(merged.get(rel, []), key)
            if found is None:  # every rank has finished: its progress is not where rank 0 looks
                raise ValueError(
                    f"no result for {rel} in {self.dir}: under torchrun on several nodes the output "
                    "folder must be shared by all of them"
                )
            picked[rel] = found
        total = sum(len(entry["rows"]) for _, entry in picked.values())
        tmp = self.output.with_name(self.output.name + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, *shape_tail))
        chunks: dict[Path, np.ndarray] = {}
        row = 0
        files: dict[str, Any] = {}
        faces: list[dict[str, Any]] = []
        for rel, (part, entry) in picked.items():
            rows = entry["rows"]
            new_rows = list(range(row, row + len(rows)))
            if rows:
                path = part / entry["chunk"]
                if path not in chunks:
                    chunks[path] = np.load(path, mmap_mode="r")
                out[row : row + len(rows)] = chunks[path][rows]
                for k, r in enumerate(new_rows):
                    faces.append({"row": r, "file": rel, **entry["faces"][k]})
            row += len(rows)
            files[rel] = {k: v for k, v in entry.items() if k != "chunk"} | {"rows": new_rows}
        out.flush()
        del out, chunks
        os.replace(tmp, self.output)
        index = {"version": STATE_VERSION, "signature": self.signature, "rows": total, "faces": faces, "files": files}
        write_json(self.index_path, index)
        shutil.rmtree(self.dir, ignore_errors=True)
        return total, index


def _pick(candidates: list[tuple[Path, dict[str, Any]]], key: str) -> tuple[Path, dict[str, Any]] | None:
    """The result made from the photo as it is now (same size and time), if any part has one."""
    return next((c for c in candidates if c[1].get("key") == key), None)


def index_path(output: Path) -> Path:
    return output.with_name(output.stem + ".index.json")


# --- the command -------------------------------------------------------------------------------------


def invert_folder(args: argparse.Namespace, info: DistInfo | None = None) -> dict[str, Any]:
    """Invert the folder; under torchrun (`info` from ddp.setup) each rank inverts its share of
    the photos left to do and rank 0 merges every rank's codes into the one output."""
    from ffclip.engine.inference import resolve_device

    info = info or DistInfo(device=resolve_device(args.device))
    folder: Path = args.dir
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    t0 = time.perf_counter()
    inverter = load_inverter(args, info.device)
    shape_tail = (
        int(inverter.latent_avg.shape[-2]) if inverter.latent_avg.ndim == 2 else inverter.encoder.style_count,
        int(inverter.latent_avg.shape[-1]),
    )
    progress = Progress(args.output, inverter.signature)
    plan = ddp.on_main(info, lambda: progress.plan(folder, args.restart))
    part = Part(progress.dir / rank_part(info.rank), inverter.signature)
    # round-robin: neighbouring photos (often alike in size and face count) spread over the ranks
    mine = plan.todo[info.rank :: info.world_size]
    stats = invert_share(args, info, inverter, part, mine, shape_tail)
    ranks = ddp.all_gather_object(info, stats)  # also waits for every rank's last flush
    return ddp.on_main(info, lambda: _finish(args, info, inverter, progress, plan, ranks, shape_tail, t0))


def invert_share(
    args: argparse.Namespace,
    info: DistInfo,
    inverter: Inverter,
    part: Part,
    mine: list[tuple[str, str]],
    shape_tail: tuple[int, int],
) -> dict[str, Any]:
    """This rank's photos: prepared by worker processes, inverted in batches, saved every
    `--flush-every` photos into this rank's part."""
    from .photos import PhotoPipeline, PrepOptions, default_workers

    t0 = time.perf_counter()
    workers = default_workers(local_world_size()) if args.workers is None else args.workers
    keys = dict(mine)
    bar = _progress_bar(args, info, len(mine))
    crops: list[np.ndarray] = []
    waiting: list[tuple[str, dict[str, Any], int]] = []  # photos whose faces wait in `crops`
    faces = 0

    def run_batch() -> None:
        codes = inverter(crops) if crops else np.zeros((0, *shape_tail), np.float32)
        start = 0
        for rel, entry, count in waiting:
            part.add(rel, entry, codes[start : start + count])
            start += count
        crops.clear()
        waiting.clear()

    since_flush = 0
    pipeline = PhotoPipeline(args.dir, PrepOptions(args.max_pixels, args.faces), workers)
    with pipeline:
        for item in pipeline.run(rel for rel, _ in mine):
            entry = {"key": keys[item.rel], **item.entry}
            count = 0 if item.crops is None else len(item.crops)
            crops.extend(item.crops if item.crops is not None else [])
            waiting.append((item.rel, entry, count))
            faces += count
            if len(crops) >= args.batch_size:
                run_batch()
            since_flush += 1
            if since_flush >= args.flush_every:
                run_batch()
                part.flush()
                since_flush = 0
            if bar is not None:
                bar.update(1)
    run_batch()
    part.flush()
    if bar is not None:
        bar.close()
    return {
        "rank": info.rank,
        "photos": len(mine),
        "faces": faces,
        "workers": workers,
        "worker_crashes": pipeline.crashes,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def local_world_size() -> int:
    """Processes that torchrun started on this node (they share its cores)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def _progress_bar(args: argparse.Namespace, info: DistInfo, total: int) -> Any:
    if args.no_progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # open_clip brings it; without it, no bar
        return None
    desc = "invert" if info.world_size == 1 else f"invert rank {info.rank}/{info.world_size}"
    return tqdm(total=total, desc=desc, unit="photo", dynamic_ncols=True, position=info.local_rank)


def _finish(
    args: argparse.Namespace,
    info: DistInfo,
    inverter: Inverter,
    progress: Progress,
    plan: Plan,
    ranks: list[dict[str, Any]],
    shape_tail: tuple[int, int],
    t0: float,
) -> dict[str, Any]:
    """Rank 0: merge every part into the output and its index; the report."""
    total, index = progress.consolidate(plan.photos, shape_tail)
    files = index["files"]
    report = {
        "folder": str(args.dir),
        "output": str(args.output),
        "index": str(index_path(args.output)),
        "shape": [total, *shape_tail],
        "encoder": inverter.signature,
        "photos": len(plan.photos),
        "photos_with_faces": sum(1 for e in files.values() if e.get("status") == "ok"),
        "faces": total,
        "inverted_this_run": len(plan.todo),
        "reused": len(plan.photos) - len(plan.todo),
        "resumed_from": plan.resumed_from,
        "no_face": sorted(rel for rel, e in files.items() if e.get("status") == "no_face"),
        "unreadable": [
            {"file": rel, "reason": e.get("reason")} for rel, e in files.items() if e.get("status") == "unreadable"
        ],
        "other_files_ignored": plan.other_files,
        "world_size": info.world_size,
        "ranks": ranks,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if args.report:
        write_json(args.report, report)
    return report
