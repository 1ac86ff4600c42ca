"""`ffclip-engine edit IN "PROMPT" -o OUT [--domain face|car|church]`: edit the faces of one photo,
or the car or church in its selection (or the whole photo).

Runs the whole pipeline in this process (models loaded here), or with `--url` sends the job to a
running daemon. `--editor passthrough` needs no weights: the aligned crop goes straight back into
the photo, which measures the warp, paste-back and seam on real photos.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from ffclip.engine.imageio import LUMA, as_rgb8, load_image, save_image, to_uint8
from ffclip.engine.inference import resolve_device
from ffclip.engine.pipeline import PhotoEdit, Pipeline
from ffclip.engine.precision import CHOICES as PRECISIONS
from ffclip.plugin.client import Photo
from ffclip.plugin.png import SIGNATURE as PNG_SIGNATURE
from ffclip.plugin.protocol import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_URL,
    DOMAINS,
    FIDELITIES,
    MAX_EDITS,
    Attribute,
    EditParams,
    EngineError,
)

UNTRAINED_NOTE = (
    "note: the '{profile}' profile is a random, untrained model; its edits look like noise inside the "
    "changed region. Use the real models for real edits."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="photo to edit")
    parser.add_argument("prompt", nargs="?", help='free-form text, e.g. "smiling, blond hair"')
    parser.add_argument("-o", "--output", required=True, help="edited photo (PNG keeps 16 bit and alpha)")
    parser.add_argument("--strength", type=float, default=1.0, help="edit strength alpha of PROMPT (default 1)")
    parser.add_argument(
        "--edit",
        action="append",
        default=[],
        metavar="PROMPT=STRENGTH",
        help=f'an attribute and its strength, e.g. --edit "smiling=0.8" --edit "grey hair=1.2" (up to {MAX_EDITS} '
        "with PROMPT; w + sum of strength x delta)",
    )
    parser.add_argument(
        "--domain",
        default="face",
        choices=DOMAINS,
        help="face (default), or car / church: the selection's bounding box (or the whole photo) is edited "
        "with that domain's e4e, FFCLIP mapper and StyleGAN2",
    )
    parser.add_argument(
        "--fidelity",
        default="standard",
        choices=FIDELITIES,
        help="standard (e4e, default) or high: HyperStyle's inversion with per-photo generator offsets keeps "
        "the person (slower; needs `ffclip-engine models fetch high`)",
    )
    parser.add_argument("--faces", default="all", help="all | largest | indices in score order, e.g. 0,2")
    parser.add_argument("--preview", action="store_true", help="fast low-resolution synthesis")
    parser.add_argument("--selection", help="8-bit mask image: 0 = must not change (optional)")
    parser.add_argument("--mask-out", help="write the final blend mask (8 bit, image size)")
    parser.add_argument("--debug-dir", help="write aligned crop, reconstruction, edit and masks per face")
    parser.add_argument("--profile", default="real", choices=("real", "tiny"), help="model profile")
    parser.add_argument("--editor", default="model", choices=("model", "passthrough"), help="debug editors")
    parser.add_argument("--models", help="model store directory")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger images (default %(default)s)",
    )
    parser.add_argument("--url", help=f"send the job to a running daemon, e.g. {DEFAULT_URL}")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the networks' arithmetic without --url: auto (fp32 for a full-resolution edit, bf16 for "
        "--preview where the processor has it natively), fp32, bf16, fp16 (GPU)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="wss:// daemon: the CA file its certificate must chain to (default $FFCLIP_TLS_CA, else the "
        "system's trust store)",
    )
    parser.add_argument(
        "--tls-fingerprint",
        metavar="SHA256",
        help="wss:// daemon: accept only the certificate with this SHA-256 fingerprint, as `serve` prints it "
        "(default $FFCLIP_TLS_FINGERPRINT)",
    )
    parser.add_argument(
        "--insecure-plain-token",
        action="store_true",
        help="send the token ($FFCLIP_TOKEN) over plain ws:// to another computer (refused otherwise: anyone on "
        "the network could read it)",
    )


def edit_params(args: argparse.Namespace) -> EditParams:
    """PROMPT (with --strength) and every --edit PROMPT=STRENGTH, in that order."""
    edits = [Attribute(args.prompt, args.strength)] if args.prompt else []
    edits += [Attribute.parse(text) for text in args.edit]
    if not edits:
        raise EngineError("bad_request", 'give a PROMPT or at least one --edit "PROMPT=STRENGTH"')
    return EditParams(
        tuple(edits),
        args.faces,
        args.preview,
        selection=bool(args.selection),
        domain=getattr(args, "domain", "face"),
        fidelity=getattr(args, "fidelity", "standard"),
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.url:
            return _run_remote(args)
        return _run_local(args)
    except EngineError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except Exception as exc:  # never a traceback for the user, unless asked
        if os.environ.get("FFCLIP_DEBUG"):
            raise
        print(
            f"error [internal]: {type(exc).__name__}: {exc} (FFCLIP_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _run_remote(args: argparse.Namespace) -> int:
    """The photo (and selection) read here by the engine's own reader, so that a bad file is refused
    with the same error as in the engine, before any connection; then sent to the daemon."""
    from ffclip.plugin.client import edit_pixels

    params = edit_params(args)
    image = load_image(args.input, max_pixels=args.max_pixels)
    selection = _load_selection(args.selection, image.shape[:2], args.max_pixels) if args.selection else None
    data = Path(args.input).read_bytes()
    height, width = image.shape[:2]
    photo = Photo(
        width,
        height,
        rgba8(image).tobytes(),
        png=data if data[:8] == PNG_SIGNATURE else None,  # as it is: smaller, 16 bit kept
        selection=None if selection is None else selection.tobytes(),
    )
    summary = edit_pixels(
        args.url,
        photo,
        params,
        args.output,
        mask_out=args.mask_out,
        tls=tls_options(args),
        plain_token=args.insecure_plain_token,
        on_moved=lambda _, error: print(f"engine moved, resending ({error.message})", file=sys.stderr),
    )
    print(f"wrote {args.output} (daemon {args.url}): {summary}")
    return 0


def rgba8(image: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 of a photo as load_image gives it (grey or RGB, 8 or 16 bit, alpha or not)."""
    rgb = as_rgb8(image)
    if image.shape[2] in (2, 4):
        alpha = image[..., -1]
        alpha = to_uint8(alpha / 257.0) if alpha.dtype == np.uint16 else alpha
    else:
        alpha = np.full(image.shape[:2], 255, np.uint8)
    return np.dstack([rgb, alpha])


def tls_options(args: argparse.Namespace):
    """--tls-ca / --tls-fingerprint (or their environment variables) for a wss:// daemon."""
    from ffclip.plugin.tls import TLSVerify

    ca = args.tls_ca or os.environ.get("FFCLIP_TLS_CA")
    pin = args.tls_fingerprint or os.environ.get("FFCLIP_TLS_FINGERPRINT")
    try:
        return TLSVerify.make(ca, pin)
    except ValueError as exc:
        raise EngineError("bad_request", str(exc)) from None


def _load_engine(args: argparse.Namespace):
    if args.editor == "passthrough":
        return None
    from ffclip.engine.inference import Engine, ModelsMissing
    from ffclip.engine.precision import PrecisionUnavailable

    try:
        where = {"profile": args.profile, "models_dir": args.models, "device": resolve_device(args.device)}
        return Engine.load(**where, domain=args.domain, precision=args.precision)
    except PrecisionUnavailable as exc:
        print(f"error [precision]: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ModelsMissing as exc:
        print(f"error [models_missing]: missing {', '.join(exc.missing)}; run `{exc.hint}`", file=sys.stderr)
        raise SystemExit(3) from None


def _load_selection(path: str, shape: tuple[int, int], max_pixels: int) -> np.ndarray:
    sel = load_image(path, max_pixels=max_pixels)
    if sel.shape[2] == 4:
        sel = sel[..., 3]
    elif sel.shape[2] == 3:
        sel = np.rint(sel.astype(np.float32) @ LUMA)
    else:
        sel = sel[..., 0]
    if sel.dtype == np.uint16 or sel.max() > 255:
        sel = sel / 257.0
    sel = np.clip(np.rint(sel), 0, 255).astype(np.uint8)
    if sel.shape != shape:
        raise EngineError(
            "bad_request", f"the selection is {sel.shape[1]}x{sel.shape[0]}, the photo {shape[1]}x{shape[0]}"
        )
    return sel


class _Progress:
    """Prints each finished stage once."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def __call__(self, stage: str, value: float) -> None:
        if value >= 1.0 and stage not in self.done:
            self.done.add(stage)
            print(f"  {stage} done", file=sys.stderr)


def _run_local(args: argparse.Namespace) -> int:
    params = edit_params(args)
    image = load_image(args.input, max_pixels=args.max_pixels)
    selection = _load_selection(args.selection, image.shape[:2], args.max_pixels) if args.selection else None
    engine = _load_engine(args)
    if engine is not None and engine.untrained:
        print(UNTRAINED_NOTE.format(profile=args.profile), file=sys.stderr)
    pipeline = Pipeline(engine, editor=args.editor, max_pixels=args.max_pixels, domain=params.domain)
    result = pipeline.edit(params, image, selection, progress=_Progress(), debug=bool(args.debug_dir))
    out = _output_array(result.image, Path(args.output))
    save_image(args.output, out)
    if args.mask_out:
        save_image(args.mask_out, result.mask)
    if args.debug_dir:
        _write_debug(Path(args.debug_dir), result)
    _summary(args, result)
    return 0


def _output_array(image: np.ndarray, path: Path) -> np.ndarray:
    """16 bit only fits PNG/TIFF; elsewhere it is reduced to 8 bit (with a note)."""
    if image.dtype == np.uint16 and path.suffix.lower() not in (".png", ".tif", ".tiff"):
        print(f"note: {path.name} cannot hold 16 bit; writing 8 bit", file=sys.stderr)
        return np.clip(np.rint(image / 257.0), 0, 255).astype(np.uint8)
    return image


def _write_debug(folder: Path, result: PhotoEdit) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_image(folder / "mask.png", result.mask)
    if result.rgba.size:
        save_image(folder / "region.png", result.rgba)
    for face, images in zip(result.faces, result.debug, strict=True):
        for name, arr in images.items():
            save_image(folder / f"{result.domain}{face.index}.{name}.png", arr)


def _summary(args: argparse.Namespace, result: PhotoEdit) -> None:
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    if result.domain == "face":
        what = "faces " + ", ".join(f"{f.index} (box {list(f.box)})" for f in result.faces)
    else:
        what = f"{result.domain} framed at {list(result.faces[0].box)}" if result.faces else result.domain
    fidelity = getattr(args, "fidelity", "standard")
    fidelity = "" if fidelity == "standard" else f"; fidelity {fidelity}"
    print(f"wrote {args.output}: {what}; region {list(result.region)}; {timings}{fidelity}")
    if result.untrained:
        print("the edit comes from an UNTRAINED model (tiny profile)")
