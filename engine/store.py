"""The model store: one folder holding the checkpoint files, each under a fixed name.

The names are the official ones where the projects publish one (`stylegan2-ffhq-config-f.pt`,
`e4e_ffhq_encode.pt`, `model_ir_se50.pth`); the FFCLIP README links its checkpoints without naming
the files (the official code saves `best_model.pt`), so those names (`ffclip_ffhq.pt`, ...) are
ours. Files are recognised by their content, never by their name: `models import ANY.pt` puts a
file where its layout belongs.

Default location `$XDG_DATA_HOME/ffclip-edit/models` (`~/.local/share/...`), or `--models DIR`.
`index.json` beside the files records, per model, the sha256 of the file the first time it passed
the strict structural check, its size, its kind, where it came from and how far it is trusted: a
download whose project publishes a sha256 (`Published`: e4e, StyleGAN2; CLIP's in OpenAI's URL)
must match it ("verified"), else it is refused and deleted; any other file is pinned as it was first
seen ("unverified (first seen)"). `verify` re-checks structure and compares with the pinned hash.

What `serve` and `edit` need is decided in one place, `ModelStore.needed()`: e4e, the FFCLIP file
and CLIP; the StyleGAN2 file only when the FFCLIP file is a mapper-only export (the FFCLIP Drive
file carries the generator, `module.generator.*`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .checkpoints.errors import CheckpointError, DamagedCheckpointError
from .checkpoints.layouts import Inspection, inspect_file
from .checkpoints.safe_load import outline
from .checkpoints.torchscript import OPENAI_VIT_B_32_URL
from .download import drive_view_url, size_cap

INDEX_NAME = "index.json"
APP_DIR = "ffclip-edit"

# what `serve`/`edit` always need, in fetch order (ModelStore.needed adds stylegan2 when required)
SERVE_NEEDS = ("ffclip", "e4e", "clip")
OPEN_CLIP_HF_URL = "https://huggingface.co/timm/vit_base_patch32_clip_224.openai"
STYLEGAN2_LICENCE = (
    "Licence: the StyleGAN2 FFHQ weights (also inside the e4e and FFCLIP files) are NVIDIA's, under the\n"
    "NVIDIA Source Code License-NC: non-commercial use only (research and evaluation). See\n"
    "https://nvlabs.github.io/stylegan2/license.html. Fetching them means you accept those terms."
)


# how far a stored file is trusted (VerifyResult.trust, the index's "trust")
VERIFIED = "verified"  # its sha256 is the one its project publishes
FIRST_SEEN = "unverified (first seen)"  # nothing published: pinned as it was when first seen
NOT_PUBLISHED = "unverified (differs from the published sha256)"  # imported by the user as it is


@dataclass(frozen=True)
class Published:
    """What a project publishes about its file: its sha256 and its size in bytes, where known."""

    sha256: str | None = None
    size: int | None = None


E4E_FFHQ = Published("2ace1d9a8c05c10a399bcd500b8dda118f759ff1aac89dbdab7435f2136a0999", 1_201_649_680)
STYLEGAN2_FFHQ = Published("bae494ef77e32a9cd1792a81a3c167692a0e64f6bcd8b06592ff42917e2ed46e", 381_462_551)
# HyperStyle's faces W encoder (the one HyperStyle file with a public digest)
HYPERSTYLE_FACES_W_ENCODER = Published("3cb757ae38268b08db8235b4a3d42c98c74428a817b619338848f277cd23e715", 257_850_531)


def published_in_url(url: str) -> str | None:
    """The sha256 a URL names as its file's folder, as OpenAI publishes CLIP (.../<sha256>/ViT-B-32.pt)."""
    folders = urllib.parse.urlsplit(url).path.split("/")[:-1]
    return folders[-1].lower() if folders and re.fullmatch(r"[0-9a-fA-F]{64}", folders[-1]) else None


OPENAI_VIT_B_32_SHA256 = published_in_url(OPENAI_VIT_B_32_URL)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # store name used on the command line
    filename: str  # the file's name in the store (see the module docstring)
    kind: str  # checkpoint layout (see checkpoints.layouts.KINDS)
    description: str
    drive_id: str | None = None  # Google Drive id from the projects' READMEs
    source: str = ""
    expect: dict[str, Any] = field(default_factory=dict)  # what inspect_file must report
    licence: str | None = None
    published: Published | None = None  # of the file at drive_id (the store keeps it as it is)


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        "stylegan2",
        "stylegan2-ffhq-config-f.pt",
        "stylegan2",
        "StyleGAN2 FFHQ 1024 generator (needed only with a mapper-only FFCLIP file)",
        "1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT",
        "rosinality conversion (FFCLIP/e4e READMEs)",
        {"size": 1024},
        STYLEGAN2_LICENCE,
        STYLEGAN2_FFHQ,
    ),
    ModelSpec(
        "e4e",
        "e4e_ffhq_encode.pt",
        "e4e",
        "e4e FFHQ encoder (photo -> W+)",
        "1cUv_reLE6k3604or78EranS7XzuVMWeO",
        "encoder4editing README",
        {"stylegan_size": 1024},
        STYLEGAN2_LICENCE,
        E4E_FFHQ,
    ),
    ModelSpec(
        "ffclip",
        "ffclip_ffhq.pt",
        "ffclip",
        "FFCLIP FFHQ mapper (text -> W+ edit) and its generator",
        "1oYMi5jsrUI_WyQ-xGf-F2T6myVGBx3od",
        "FFCLIP README (Drive link)",
        {"n_latent": 18},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "clip",
        "clip_vit_b_32_openai.safetensors",
        "clip",
        "CLIP ViT-B/32, OpenAI weights",
        None,
        "open_clip ('ViT-B-32', pretrained='openai', QuickGELU)",
    ),
    ModelSpec(
        "arcface",
        "model_ir_se50.pth",
        "arcface",
        "ArcFace IR-SE-50 (training identity loss)",
        "1KW7bjndL3QG3sxBbZxreGHigcCCpsDgn",
        "FFCLIP/e4e READMEs (TreB1eN)",
        {"input_size": 112},
    ),
    ModelSpec(
        "moco",
        "moco_v2_800ep_pretrain.pt",
        "moco",
        "MoCo v2 ResNet-50 (training similarity loss of cars and churches)",
        "18rLcNGdteX5LwT7sv_F7HWr12HpVEzVe",
        "encoder4editing README (facebookresearch/moco)",
        {"arch": "resnet50"},
    ),
    ModelSpec(
        "hyperstyle",
        "hyperstyle_ffhq.pt",
        "hyperstyle",
        "HyperStyle FFHQ hypernetwork (fidelity high: per-photo generator weight offsets) and its generator",
        "1C3dEIIH1y8w1-zQMCyx7rDF0ndswSXh4",
        "HyperStyle README (yuval-alaluf/hyperstyle, MIT)",
        {"size": 1024},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "hyperstyle-w-encoder",
        "faces_w_encoder.pt",
        "w_encoder",
        "HyperStyle's faces W encoder (fidelity high: photo -> W, its first inversion)",
        "1M-hsL3W_cJKs77xM1mwq2e9-J0_m7rHP",
        "HyperStyle README (Pretrained W-Encoders)",
        {"stylegan_size": 1024},
        STYLEGAN2_LICENCE,
        HYPERSTYLE_FACES_W_ENCODER,
    ),
    ModelSpec(
        "e4e-cars",
        "e4e_cars_encode.pt",
        "e4e",
        "e4e cars encoder (512, 16 W+ layers)",
        "17faPqBce2m1AQeLCLHUVXaDfxMRU2QcV",
        "encoder4editing README",
        {"stylegan_size": 512},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "e4e-church",
        "e4e_church_encode.pt",
        "e4e",
        "e4e church encoder (256, 14 W+ layers)",
        "1-L0ZdnQLwtdy6-A_Ccgq5uNJGTqE7qBa",
        "encoder4editing README",
        {"stylegan_size": 256},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "ffclip-car",
        "ffclip_car.pt",
        "ffclip",
        "FFCLIP car mapper",
        "11Zsx_bjMbIzzTjLxWDhOEgoXmnbNwH7t",
        "FFCLIP README (Drive link)",
        {"n_latent": 16},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "ffclip-church",
        "ffclip_church.pt",
        "ffclip",
        "FFCLIP church mapper",
        "1ihmvppjLXh71ARx4NLnIMzJRAFLdQnmn",
        "FFCLIP README (Drive link)",
        {"n_latent": 14},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "hyperstyle-cars",
        "hyperstyle_cars.pt",
        "hyperstyle",
        "HyperStyle cars hypernetwork (512, 16 W+ layers) and its generator",
        "1WZ7iNv5ENmxXFn6dzPeue1jQGNp6Nr9d",
        "HyperStyle README (yuval-alaluf/hyperstyle, MIT)",
        {"size": 512},
        STYLEGAN2_LICENCE,
    ),
    ModelSpec(
        "hyperstyle-w-encoder-cars",
        "cars_w_encoder.pt",
        "w_encoder",
        "HyperStyle's cars W encoder",
        "1GZke8pfXMSZM9mfT-AbP1Csyddf5fas7",
        "HyperStyle README (Pretrained W-Encoders)",
        {"stylegan_size": 512},
        STYLEGAN2_LICENCE,
    ),
)
# ModelStore.spec(name) reads this: a spec replaced here (a test's published digest) is the one fetch,
# verify and import go by
SPEC_BY_NAME = {s.name: s for s in SPECS}


def default_root(environ: dict | None = None) -> Path:
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_DATA_HOME", "")
    home = Path(environ.get("HOME") or Path.home())
    base = Path(xdg) if os.path.isabs(xdg) else home / ".local" / "share"  # XDG: relative is invalid
    return base / APP_DIR / "models"


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class VerifyResult:
    name: str
    status: str  # ok | recorded | missing | invalid | changed
    message: str = ""
    sha256: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    trust: str = ""  # VERIFIED, FIRST_SEEN or NOT_PUBLISHED once the file is in the store

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "recorded")


class ModelStore:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.custom_root = root is not None
        self.root = Path(root).expanduser().absolute() if root is not None else default_root()

    # --- names and paths ---

    @staticmethod
    def spec(name: str) -> ModelSpec:
        """A spec by store name or by its file name in the store."""
        if name in SPEC_BY_NAME:
            return SPEC_BY_NAME[name]
        for spec in SPECS:
            if spec.filename == name:
                return spec
        raise KeyError(f"unknown model {name!r}; known: {', '.join(SPEC_BY_NAME)}")

    def path(self, name: str) -> Path:
        return self.root / self.spec(name).filename

    def part_path(self, name: str) -> Path:
        path = self.path(name)
        return path.with_name(path.name + ".part")

    def present(self, name: str) -> bool:
        return self.path(name).is_file()

    def needed(self, domain: str = "face") -> list[str]:
        """Store names of what `serve`/`edit` need for `domain`, in fetch order. Faces: the FFCLIP
        file first (whether it carries its generator decides about stylegan2), e4e, CLIP;
        stylegan2 only when the store's FFCLIP file is mapper-only. A car or a church: its e4e and
        FFCLIP files and CLIP (a mapper-only file takes the e4e file's generator). The one rule
        `models list|fetch|verify`, Engine.load and the daemon's status all follow."""
        if domain != "face":
            from .domains import needed_models

            return list(needed_models(domain))
        names = list(SERVE_NEEDS)
        if self.ffclip_lacks_generator():
            names.insert(1, "stylegan2")
        return names

    def ffclip_lacks_generator(self) -> bool:
        """True when the store's FFCLIP file is a mapper-only export (no `module.generator.*`).
        Read from the index when the file was verified, else from the file's pickle alone (no
        tensor data); an absent or unreadable file counts as the official one, with its generator."""
        if not self.present("ffclip"):
            return False
        with contextlib.suppress(CheckpointError):
            entry = self.index().get("ffclip", {})
            if entry.get("size") == self.path("ffclip").stat().st_size and "generator_size" in entry.get("info", {}):
                return entry["info"]["generator_size"] is None
        try:
            state_dict = outline(self.path("ffclip")).get("state_dict", {})
        except (CheckpointError, AttributeError):
            return False  # loading it will say what is wrong with it
        return not any(str(k).startswith(("module.generator.", "generator.")) for k in state_dict)

    def high_fidelity(self, domain: str = "face") -> list[str]:
        """Store names of what `fidelity: high` adds for `domain` (HyperStyle's hypernetwork file and
        its W encoder); empty where HyperStyle publishes no model (churches)."""
        from .domains import high_fidelity_models

        return list(high_fidelity_models(domain))

    def missing(self, names: Iterable[str] | None = None) -> list[str]:
        """Store names of the models `serve`/`edit` need (or of `names`) whose file is absent."""
        wanted = list(names) if names is not None else self.needed()
        return [n for n in wanted if not self.present(n)]

    @property
    def fetch_hint(self) -> str:
        where = f" --models {self.root}" if self.custom_root else ""
        return f"ffclip-engine models fetch{where}"

    # --- index ---

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"the store index {self.index_path} is unreadable ({exc})") from None
        return data.get("models", {}) if isinstance(data, dict) else {}

    def record(self, name: str, entry: dict[str, Any]) -> None:
        models = self.index()
        models[name] = entry
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_name(f"{INDEX_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "models": models}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.index_path)  # readers (a running daemon) never see half a file

    # --- checks ---

    def check_file(self, name: str, path: str | os.PathLike[str]) -> Inspection:
        """Strict structural check of `path` as the store's `name` (kind and domain included)."""
        spec = self.spec(name)
        found = inspect_file(path, spec.kind)
        wrong = {k: found.info.get(k) for k, v in spec.expect.items() if found.info.get(k) != v}
        if wrong:
            got = ", ".join(f"{k}={v}" for k, v in wrong.items())
            want = ", ".join(f"{k}={spec.expect[k]}" for k in wrong)
            raise CheckpointError(f"{Path(path).name} is a {spec.kind} checkpoint with {got}; {spec.name} needs {want}")
        return found

    @staticmethod
    def _entry(spec: ModelSpec, path: Path, sha: str, info: dict[str, Any], source: str, trust: str) -> dict[str, Any]:
        return {
            "file": spec.filename,
            "kind": spec.kind,
            "sha256": sha,
            "size": path.stat().st_size,
            "verified_at": _now(),
            "source": source,
            "info": info,
            "trust": trust,
        }

    def trust(self, name: str, sha: str, recorded: str | None = None) -> str:
        """How far the file `sha` is trusted as `name`: against the published sha256 where there is
        one, else what was recorded (a CLIP file converted from OpenAI's), else first seen."""
        published = (self.spec(name).published or Published()).sha256
        if published:
            return VERIFIED if sha == published else NOT_PUBLISHED
        return recorded or FIRST_SEEN

    def verify(self, name: str, *, accept: bool = False, path: Path | None = None) -> VerifyResult:
        """Check the file's structure, then its sha256 against the record (recording it the first time)."""
        spec = self.spec(name)
        path = path or self.path(name)
        if not path.is_file():
            hint = f"fetch it with `{self.fetch_hint} {name}`"
            return VerifyResult(name, "missing", f"{path} is missing; {hint}")
        try:
            found = self.check_file(name, path)
        except DamagedCheckpointError as exc:  # say which model to fetch again, and how
            repair = f"Delete it and fetch it again with `{self.fetch_hint} {name}`, or import a good copy"
            return VerifyResult(name, "invalid", str(exc.with_repair(repair)))
        except CheckpointError as exc:
            return VerifyResult(name, "invalid", str(exc))
        sha = sha256_file(path)
        old = self.index().get(name, {})
        if old.get("sha256") and old["sha256"] != sha and not accept:
            return VerifyResult(
                name,
                "changed",
                f"{path.name} passes the structural check, but its sha256 {sha[:16]}… differs from "
                f"{old['sha256'][:16]}… recorded at {old.get('verified_at', '?')}; if you replaced it on "
                f"purpose, run `ffclip-engine models verify --accept {name}`",
                sha,
                found.info,
            )
        if old.get("sha256") == sha:
            trust = self.trust(name, sha, old.get("trust"))
            entry = {**old, "verified_at": _now(), "info": found.info, "size": path.stat().st_size, "trust": trust}
            self.record(name, entry)
            return VerifyResult(name, "ok", "", sha, found.info, trust)
        source = old.get("source", "found in the store") if not accept else "accepted by verify --accept"
        trust = self.trust(name, sha)
        self.record(name, self._entry(spec, path, sha, found.info, source, trust))
        return VerifyResult(name, "recorded", "", sha, found.info, trust)

    # --- import ---

    def match_spec(self, found: Inspection) -> ModelSpec:
        for spec in SPECS:
            if spec.kind == found.kind and all(found.info.get(k) == v for k, v in spec.expect.items()):
                return spec
        raise CheckpointError(f"no store entry takes a {found.kind} checkpoint with {found.info}")

    def import_file(
        self, src: str | os.PathLike[str], kind: str | None = None, name: str | None = None
    ) -> tuple[str, VerifyResult]:
        """Check `src` strictly, put it in the store where its content belongs and record its sha256.

        Most files are copied as they are; CLIP in any other form than safetensors (OpenAI's
        TorchScript `ViT-B-32.pt`, a pickled state_dict) is stored as safetensors. The result's
        `info` describes `src`."""
        src = Path(src)
        if name is not None:
            spec = self.spec(name)
            if kind is not None and kind != spec.kind:
                raise CheckpointError(f"{name} holds a {spec.kind} checkpoint, not {kind}")
            found = self.check_file(spec.name, src)
        else:
            found = inspect_file(src, kind)
            spec = self.match_spec(found)
        dest = self.path(spec.name)
        self.root.mkdir(parents=True, exist_ok=True)
        source = f"import: {src.resolve()}"
        vouched = None  # CLIP converted from OpenAI's published file
        if spec.kind == "clip" and found.info.get("format") != "safetensors":
            part = self.part_path(spec.name)
            write_clip_safetensors(src, part, found.parts)
            os.replace(part, dest)
            note, published = clip_source_note(src, found.info.get("format"))
            source += note
            vouched = VERIFIED if published else None
        elif src.resolve() != dest.resolve():
            part = self.part_path(spec.name)
            shutil.copyfile(src, part)
            os.replace(part, dest)
        # an explicit import is the user vouching for the file: it replaces any earlier record
        stored = self.check_file(spec.name, dest)
        sha = sha256_file(dest)
        trust = self.trust(spec.name, sha, vouched)
        self.record(spec.name, self._entry(spec, dest, sha, stored.info, source, trust))
        return spec.name, VerifyResult(spec.name, "recorded", "", sha, found.info, trust)

    # --- fetch ---

    @property
    def import_hint(self) -> str:
        where = f" --models {self.root}" if self.custom_root else ""
        return f"ffclip-engine models import{where} FILE"

    def manual_route(self, name: str) -> str:
        """How to get a model by hand when fetching fails: where to download it, then import."""
        spec = self.spec(name)
        if spec.kind == "clip":
            where = (
                f"download OpenAI's ViT-B-32.pt ({OPENAI_VIT_B_32_URL}) or open_clip_model.safetensors "
                f"from {OPEN_CLIP_HF_URL}"
            )
        elif spec.drive_id:
            where = f"open {drive_view_url(spec.drive_id)} in a browser and download the file"
        else:  # pragma: no cover - every spec names a source
            where = "get the file"
        return f"manual route: {where}, then run `{self.import_hint}`"

    def fetch(
        self,
        name: str,
        *,
        out: IO[str] | None = None,
        fetcher: Callable[..., Path] | None = None,
        url: str | None = None,
        **download_options: Any,
    ) -> VerifyResult:
        """Download (resuming a .part file), check the published sha256 and the structure, move into
        place and record the sha256.

        `url` takes the file from a mirror instead of its published source (the published sha256
        and size still apply). Every failure comes back as a VerifyResult whose message says what
        happened and the manual route."""
        from .download import DownloadError, download, drive_url

        out = out or sys.stderr
        spec = self.spec(name)
        if self.present(name):
            result = self.verify(name)
            if result.ok:
                return VerifyResult(name, "ok", "already in the store", result.sha256, result.info, result.trust)
            # a bad file in place is reported, never silently replaced
            result.message += f"\n  (delete {self.path(name)} to fetch it again, or import a good copy)"
            return result
        part = self.part_path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        manual = f"\n  {self.manual_route(name)}"
        try:
            with _exclusive(part):
                vouched = None
                if spec.kind == "clip" and url:
                    fetch_clip_from(self, url, part, out=out, **download_options)
                    vouched = VERIFIED if published_in_url(url) else None  # a mismatch was refused
                elif spec.kind == "clip":
                    (fetcher or fetch_clip)(self, part, out=out)
                elif url or spec.drive_id:
                    target = url or drive_url(spec.drive_id or "")
                    cap = size_cap((spec.published or Published()).size)
                    download(target, part, label=spec.filename, stream=out, max_bytes=cap, **download_options)
                else:  # pragma: no cover - every spec names a source
                    raise DownloadError(f"no download source for {name}")
                return self._adopt_download(spec, part, url, vouched)
        except DownloadError as exc:
            return VerifyResult(name, "invalid", f"{exc}{manual}")
        except CheckpointError as exc:  # e.g. a CLIP download in a form that cannot be read safely
            return VerifyResult(name, "invalid", f"the downloaded file cannot be used: {exc}{manual}")
        except OSError as exc:  # disk full, permissions: keep the .part for a later resume
            return VerifyResult(name, "invalid", f"cannot write {part}: {exc}")

    def _adopt_download(
        self, spec: ModelSpec, part: Path, url: str | None = None, vouched: str | None = None
    ) -> VerifyResult:
        # the published sha256 first: a file known not to be the published one is never unpickled
        sha = sha256_file(part)
        published = (spec.published or Published()).sha256
        if published and sha != published:
            part.unlink(missing_ok=True)  # neither kept nor resumed
            return VerifyResult(
                spec.name,
                "invalid",
                f"the download's sha256 {sha[:16]}… differs from the published {published[:16]}…: it is not "
                f"the published {spec.filename}, and was deleted\n  {self.manual_route(spec.name)}",
            )
        try:
            found = self.check_file(spec.name, part)
        except CheckpointError as exc:
            part.unlink(missing_ok=True)  # a wrong file must not be resumed next time
            return VerifyResult(
                spec.name, "invalid", f"the downloaded file was rejected: {exc}\n  {self.manual_route(spec.name)}"
            )
        old = self.index().get(spec.name, {})
        if not published and old.get("sha256") and old["sha256"] != sha:  # first seen is all we have
            return VerifyResult(
                spec.name,
                "changed",
                f"the download's sha256 {sha[:16]}… differs from {old['sha256'][:16]}… recorded at "
                f"{old.get('verified_at', '?')}; it was left at {part}. If the source changed on purpose, "
                f"run `ffclip-engine models import {part}`",
                sha,
                found.info,
            )
        os.replace(part, self.path(spec.name))
        if url:
            source = f"fetch: {url}"
        else:
            source = f"fetch: {spec.source}" + (f" (drive id {spec.drive_id})" if spec.drive_id else "")
        trust = self.trust(spec.name, sha, vouched)
        self.record(spec.name, self._entry(spec, self.path(spec.name), sha, found.info, source, trust))
        return VerifyResult(spec.name, "recorded", "", sha, found.info, trust)


@contextlib.contextmanager
def _exclusive(part: Path) -> Iterator[None]:
    """One downloader per .part file: a second `models fetch` of the same model stops at once."""
    from .download import DownloadError

    lock_path = part.with_name(part.name + ".lock")
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no locking, as before
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError(f"another process is downloading {part.name} right now") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def fetch_clip(store: ModelStore, part: Path, *, out: IO[str] | None = None) -> Path:
    """CLIP ViT-B/32 (OpenAI) through open_clip's own download, kept as safetensors at `part`."""
    from open_clip import pretrained

    from .download import DownloadError

    cache = store.root / ".cache" / "open_clip"
    cfg = pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    try:
        downloaded = Path(pretrained.download_pretrained(cfg, cache_dir=str(cache)))
    except Exception as exc:  # open_clip / huggingface_hub raise many types
        raise DownloadError(f"open_clip could not download ViT-B-32 (openai): {type(exc).__name__}: {exc}") from None
    if not downloaded.is_file():
        raise DownloadError("open_clip's download produced no file")
    try:
        write_clip_safetensors(downloaded.resolve(), part)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # the store keeps its own copy
    return part


def fetch_clip_from(store: ModelStore, url: str, part: Path, *, out: IO[str] | None = None, **options: Any) -> Path:
    """CLIP from a mirror URL (any form `models import` takes), kept as safetensors at `part`; a URL
    that names its file's sha256, as OpenAI's does, must bring that file."""
    from .download import DownloadError, download

    source = part.with_name(part.name.removesuffix(".part") + ".source.part")
    download(url, source, label=store.spec("clip").filename, stream=out, **options)
    published = published_in_url(url)
    if published and (sha := sha256_file(source)) != published:
        source.unlink()
        raise DownloadError(
            f"the download's sha256 {sha[:16]}… differs from the {published[:16]}… its URL publishes; it was deleted"
        )
    try:
        write_clip_safetensors(source, part)
    except CheckpointError:
        source.unlink(missing_ok=True)  # a wrong file must not be resumed next time
        raise
    source.unlink()
    return part


def write_clip_safetensors(src: Path, dest: Path, state_dict: dict[str, Any] | None = None) -> None:
    """The store's CLIP file (open_clip's layout, safetensors) from safetensors (copied), OpenAI's
    TorchScript archive or a pickled state_dict (both read without running code and checked
    strictly); `state_dict`: what inspecting `src` already read."""
    from .checkpoints.safe_load import sniff

    if sniff(src) == "safetensors":
        shutil.copyfile(src, dest)
        return
    import torch
    from safetensors.torch import save_file

    if state_dict is None:
        state_dict = inspect_file(src, "clip").parts
    # own, dense copies: archive tensors are views, and safetensors refuses shared storage
    save_file({k: v.clone(memory_format=torch.contiguous_format) for k, v in state_dict.items()}, str(dest))


def clip_source_note(src: Path, fmt: str | None) -> tuple[str, bool]:
    """For the index: what the imported CLIP file was, and whether it is OpenAI's published one."""
    if fmt != "torchscript":
        return f" ({fmt or 'pickled'} state_dict, stored as safetensors)", False
    sha = sha256_file(src)
    if sha == OPENAI_VIT_B_32_SHA256:
        return " (OpenAI's TorchScript ViT-B-32.pt, sha256 as published; stored as safetensors)", True
    return f" (a TorchScript archive, sha256 {sha[:16]}…, not OpenAI's published file; stored as safetensors)", False
