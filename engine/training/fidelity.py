"""`ffclip-engine evaluate --fidelity-photos DIR -o OUT`: how well each fidelity keeps the person
(issue 29). For the largest face of every photo in DIR (aligned as the engine aligns it, 256²),
each fidelity inverts it — `standard` with e4e, `high` with HyperStyle (W encoder + n_iters
refinements, the photo's generator offsets) — and reconstructs it at the generator's full size,
pooled to 256² (HyperStyle's `face_pool`). Per fidelity:

* `id_similarity`: ArcFace IR-SE-50 cosine of the aligned photo and its reconstruction on the
  official IDLoss crop (the HyperStyle paper's measure; its CelebA-HQ figures: e4e 0.50, HyperStyle
  0.76) — only when the ArcFace weights are present (`--arcface FILE` or the store's `arcface`);
  otherwise null, and the report says why;
* `mse` (images in [-1, 1]) and `psnr_db` (peak-to-peak 2) of the reconstruction against the photo;
* `invert_seconds`: the inversion's time per face.

A fidelity the engine cannot run (HyperStyle's files absent) is reported as skipped, naming them.
Writes `fidelity.json` in OUT.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffclip.plugin.protocol import FIDELITIES

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def photo_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())


def aligned_faces(paths: Iterable[Path], log: Callable[[str], None] = print) -> list[tuple[str, np.ndarray]]:
    """(name, the largest face aligned as the engine aligns it, (256, 256, 3) uint8) of each photo
    with a face; photos without one are said and left out."""
    from ffclip.engine.face.align import align_face
    from ffclip.engine.face.detect import FaceDetector
    from ffclip.engine.imageio import as_rgb8, load_image

    detector = FaceDetector()
    out = []
    for path in paths:
        rgb = as_rgb8(load_image(path))
        faces = detector.detect(rgb)
        if not faces:
            log(f"{path.name}: no face, left out")
            continue
        face = max(faces, key=lambda f: f.area)
        aligned, _ = align_face(rgb, face.quad, face.qsize, output_size=256)
        out.append((path.name, aligned))
    return out


def reconstruct(engine: Any, x: torch.Tensor, fidelity: str) -> tuple[torch.Tensor, float]:
    """The face x (1, 3, 256, 256) in [-1, 1] inverted at `fidelity` and synthesized at full size,
    pooled to 256²; with the inversion's seconds."""
    t0 = time.perf_counter()
    if fidelity == "high":
        w, offsets = engine.invert_high(x)
        options = {"offsets": offsets}
    else:
        w, options = engine.invert(x), {}
    seconds = time.perf_counter() - t0
    image = engine.synthesize(w, **options)
    return F.adaptive_avg_pool2d(image.float().cpu(), (256, 256)), seconds


def evaluate_fidelity(
    engine: Any,
    faces: list[tuple[str, np.ndarray]],
    arcface: torch.nn.Module | None,
    arcface_note: str,
    fidelities: Iterable[str] = FIDELITIES,
) -> dict[str, Any]:
    from .losses import id_crop

    report: dict[str, Any] = {"faces": len(faces), "arcface": arcface_note, "fidelities": {}, "photos": []}
    rows: dict[str, dict[str, Any]] = {name: {"photo": name} for name, _ in faces}
    for fidelity in fidelities:
        missing = engine.high_fidelity_missing() if fidelity == "high" else []
        if missing:
            report["fidelities"][fidelity] = {"skipped": f"missing {', '.join(missing)}"}
            continue
        ids, mses, seconds = [], [], []
        for name, aligned in faces:
            x = torch.from_numpy(aligned.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()
            recon, secs = reconstruct(engine, x, fidelity)
            mse = float(((recon.double() - x.double()) ** 2).mean())
            entry = {"mse": mse, "psnr_db": 10 * math.log10(4.0 / mse) if mse > 0 else None, "invert_seconds": secs}
            if arcface is not None:
                with torch.inference_mode():
                    device = next(arcface.parameters()).device
                    a = arcface(id_crop(x.to(device))).float()
                    b = arcface(id_crop(recon.to(device))).float()
                entry["id_similarity"] = float(F.cosine_similarity(a, b).item())
                ids.append(entry["id_similarity"])
            rows[name][fidelity] = entry
            mses.append(mse)
            seconds.append(secs)
        mean_mse = float(np.mean(mses)) if mses else None
        report["fidelities"][fidelity] = {
            "id_similarity": float(np.mean(ids)) if ids else None,
            "mse": mean_mse,
            "psnr_db": 10 * math.log10(4.0 / mean_mse) if mean_mse else None,
            "invert_seconds": float(np.median(seconds)) if seconds else None,
        }
    report["photos"] = list(rows.values())
    return report


def find_arcface(path: str | None, models: str | None, device: torch.device) -> tuple[Any, str]:
    """The ArcFace IR-SE-50 network: `path`, else the model store's `arcface`; (None, why) without it."""
    from ffclip.engine.store import ModelStore

    from .nets import load_arcface

    if path:
        return load_arcface(path).to(device), f"{Path(path).name} (IR-SE-50)"
    store = ModelStore(models)
    if store.present("arcface"):
        return load_arcface(store.path("arcface")).to(device), "model_ir_se50.pth (IR-SE-50, the model store)"
    return None, (
        "ArcFace weights not found (--arcface FILE, or `ffclip-engine models fetch arcface`): id_similarity skipped"
    )


def run_fidelity_evaluation(args: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ffclip.engine.inference import Engine, resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    folder = Path(args.fidelity_photos)
    if not folder.is_dir():
        raise FileNotFoundError(f"--fidelity-photos {folder}: not a folder")
    engine = Engine.load(args.profile, args.models, device, threads=getattr(args, "threads", None))
    faces = aligned_faces(photo_files(folder)[: args.limit or None], log)
    if not faces:
        raise ValueError(f"no face found in the photos of {folder}")
    arcface, note = find_arcface(args.arcface, args.models, device)
    log(note)
    report = evaluate_fidelity(engine, faces, arcface, note)
    report["profile"] = args.profile
    report["untrained"] = engine.untrained
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
