"""The recipe of an FFCLIP layer: what made it, kept on the layer so that the edit can be reopened.

An applied edit's layer carries a persistent parasite `ffclip-edit/recipe` (saved in the XCF): UTF-8
JSON with the attributes (`edits`), the faces, the domain, the output, the engine's model identities,
and the source layer — its tattoo (GIMP's id of a layer that survives saving and loading), its name
and the SHA-256 of the pixels that were edited. Running FFCLIP Edit with such a layer selected edits
its source again: `check_source` says whether that source is still there and unchanged, so that a
deleted or painted-over source is never edited silently. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ffclip.plugin.protocol import (
    DEFAULT_FIDELITY,
    DOMAINS,
    FIDELITIES,
    MAX_EDITS,
    Attribute,
    BadRequest,
    EditParams,
    parse_faces,
)

PARASITE = "ffclip-edit/recipe"
VERSION = 1
MAX_BYTES = 64 * 1024  # a recipe is a few hundred bytes; anything larger is not ours


class RecipeError(ValueError):
    """A parasite that is not a recipe this plug-in can read."""


@dataclass(frozen=True)
class SourceRef:
    """The layer an FFCLIP layer was made from."""

    tattoo: int
    name: str
    sha256: str  # of its RGBA8 pixels (and selection) as they were sent


@dataclass(frozen=True)
class Recipe:
    edits: tuple[Attribute, ...]
    source: SourceRef
    faces: str | tuple[int, ...] = "all"
    domain: str = "face"
    output: str = "layer-mask"
    models: dict = field(default_factory=dict)  # the engine's `models` status: profile, sources, untrained
    fidelity: str = DEFAULT_FIDELITY  # "high": inverted with HyperStyle (issue 29)

    @classmethod
    def of(cls, params: EditParams, source: SourceRef, output: str, models: dict | None = None) -> Recipe:
        identities = _identities(models or {})
        return cls(params.edits, source, params.faces, params.domain, output, identities, params.fidelity)

    def params(self, preview: bool = False) -> EditParams:
        return EditParams(self.edits, self.faces, preview=preview, domain=self.domain, fidelity=self.fidelity)

    def with_edits(self, params: EditParams) -> Recipe:
        """The same source, the new edit (a reopened edit applied again, or a script's new prompt)."""
        return Recipe(params.edits, self.source, params.faces, params.domain, self.output, self.models, params.fidelity)

    def to_bytes(self) -> bytes:
        doc = {
            "version": VERSION,
            "edits": [e.to_message() for e in self.edits],
            "faces": self.faces if isinstance(self.faces, str) else list(self.faces),
            "domain": self.domain,
            **({"fidelity": self.fidelity} if self.fidelity != DEFAULT_FIDELITY else {}),
            "output": self.output,
            "models": self.models,
            "source": {"tattoo": self.source.tattoo, "name": self.source.name, "sha256": self.source.sha256},
        }
        return json.dumps(doc, ensure_ascii=False, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Recipe:
        """The recipe in a parasite's data; RecipeError when it is not one."""
        if len(data) > MAX_BYTES:
            raise RecipeError("the recipe is too large")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise RecipeError(f"the recipe is not UTF-8 JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise RecipeError("not a recipe of this version of FFCLIP Edit")
        try:
            edits = tuple(Attribute.from_message(e) for e in doc["edits"])
            if not 1 <= len(edits) <= MAX_EDITS:
                raise RecipeError(f"a recipe holds 1 to {MAX_EDITS} edits")
            source = doc["source"]
            ref = SourceRef(int(source["tattoo"]), str(source["name"]), str(source["sha256"]))
            faces = parse_faces(doc.get("faces", "all"))
            domain = doc.get("domain", "face")
            if domain not in DOMAINS:
                raise RecipeError(f"unknown domain {domain!r}")
            output = doc.get("output", "layer-mask")
            models = doc.get("models") if isinstance(doc.get("models"), dict) else {}
            fidelity = doc.get("fidelity", DEFAULT_FIDELITY)
            if fidelity not in FIDELITIES:
                raise RecipeError(f"unknown fidelity {fidelity!r}")
        except (KeyError, TypeError, ValueError, BadRequest) as exc:
            raise RecipeError(f"the recipe is incomplete ({exc})") from None
        output = output if output in ("layer", "layer-mask") else "layer-mask"
        return cls(edits, ref, faces, domain, output, models, fidelity)


def pixels_digest(rgba: bytes) -> str:
    """The fingerprint of the layer an edit was made from (its RGBA8 pixels as they were sent)."""
    return hashlib.sha256(rgba).hexdigest()


def check_source(recipe: Recipe, found: bool, digest: str | None) -> str | None:
    """Why the recipe's source cannot be edited again as it was (a sentence), None when it can.
    `found`: a layer with the recipe's tattoo exists; `digest`: the pixels_digest of it now."""
    name = recipe.source.name
    if not found:
        return f"The layer this edit was made from (\u201c{name}\u201d) has been deleted."
    if digest != recipe.source.sha256:
        return f"The layer this edit was made from (\u201c{name}\u201d) has changed since the edit."
    return None


def _identities(models: dict) -> dict[str, Any]:
    """What identifies the engine's models in its status (never a path): profile, domain, sources."""
    keep = ("profile", "domain", "untrained", "size", "sources")
    return {k: models[k] for k in keep if k in models}
