"""Training prompts: a text file, one prompt a line, optionally grouped in "[category]" sections.

The default (`engine/data/prompts.txt`) is the official FFCLIP list: emotions, age/gender, face
attributes, eyes, hair colours and hair styles, with the official repetitions (a repeated prompt is
drawn proportionally more often). Prompts are drawn per sample; their CLIP text embeddings are
computed once, before training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

DEFAULT_NAME = "prompts.txt"


@dataclass
class PromptSet:
    prompts: list[str]  # one entry per draw slot (repetitions kept)
    categories: list[str]  # category of each entry ("" when the file has none)
    source: str = "official"
    unique: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"no prompts in {self.source}")
        if len(self.prompts) != len(self.categories):
            raise ValueError("one category per prompt")
        self.unique = list(dict.fromkeys(self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    def unique_index(self) -> list[int]:
        """For each entry, its index in `unique` (where its embedding lives)."""
        pos = {p: i for i, p in enumerate(self.unique)}
        return [pos[p] for p in self.prompts]


def parse_prompts(text: str, source: str = "<text>") -> PromptSet:
    prompts: list[str] = []
    categories: list[str] = []
    category = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            category = line[1:-1].strip().lower()
            continue
        prompts.append(line)
        categories.append(category)
    return PromptSet(prompts, categories, source)


def default_prompts_text() -> str:
    return resources.files("ffclip.engine").joinpath("data", DEFAULT_NAME).read_text(encoding="utf-8")


def load_prompts(path: str | os.PathLike[str] | None = None) -> PromptSet:
    """The prompts of `path`, or the official list when None."""
    if path is None:
        return parse_prompts(default_prompts_text(), "official FFCLIP list")
    path = Path(path)
    return parse_prompts(path.read_text(encoding="utf-8"), str(path))


def eval_prompts(path: str | os.PathLike[str] | None, limit: int | None = None) -> list[str]:
    """Distinct prompts for evaluation: the file's (in order), or a spread over the official list."""
    unique = load_prompts(path).unique
    if path is None and limit is None:
        limit = 8
    if limit is None or limit >= len(unique):
        return unique
    step = len(unique) / limit
    return [unique[int(i * step)] for i in range(limit)]
