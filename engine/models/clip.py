"""CLIP through open_clip: `ViT-B-32` with QuickGELU (the OpenAI weights), or a narrow seeded
stand-in for the `tiny` profile.

FFCLIP conditions its mapper on the *raw* `encode_text` output (not l2-normalised), shape
(B, 1, 512); `TextEncoder` returns exactly that and keeps an LRU cache per prompt, so a re-edit
with a known prompt costs nothing. `encode_text` runs the transformer only on the tokens up to the
end-of-text token (the rest of the 77-token context cannot reach it through the causal mask).
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import Tensor

from ffclip.engine.cache import LRUCache
from ffclip.engine.seeding import seeded

MODEL_NAME = "ViT-B-32"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(state_dict: dict[str, Tensor] | None = None, *, text_only: bool = False) -> CLIP:
    """ViT-B/32 with QuickGELU; `state_dict` (open_clip layout) loaded strictly when given."""
    model = open_clip.create_model(MODEL_NAME, pretrained=None, force_quick_gelu=True)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    if text_only:
        model.visual = None  # the text path never touches it; saves ~350 MB
    return model.eval()


def build_tiny_clip(seed: int = 0, embed_dim: int = 64) -> CLIP:
    """Same family (text transformer, ViT), narrow and randomly initialised: for tests only."""
    with seeded(seed):
        model = CLIP(
            embed_dim=embed_dim,
            vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224, head_width=32),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
            quick_gelu=True,
        )
    return model.eval()


def load_clip_weights(path: str | Path) -> dict[str, Tensor]:
    """open_clip state_dict from a .safetensors or a (safely unpickled) .bin/.pt file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from ffclip.engine.checkpoints.safe_load import load_checkpoint

    sd = load_checkpoint(path)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def encode_text(model: CLIP, tokens: Tensor) -> Tensor:
    """`model.encode_text(tokens)` (raw, not normalised) on the shortest prefix that holds every
    prompt's end-of-text token: the causal mask keeps later (padding) positions from reaching the
    pooled one, so the result is the same while a short prompt costs ~8 positions instead of 77."""
    if model.text_pool_type != "argmax" or model.attn_mask is None:
        return model.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens[:, :n]).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(x.shape[0], device=x.device), tokens[:, :n].argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


class TextEncoder:
    """Prompt -> raw CLIP text embedding (1, 1, D), LRU-cached per prompt."""

    def __init__(self, model: CLIP, device: torch.device | str = "cpu", cache_size: int = 256) -> None:
        self.model = model.to(device)
        self.device = torch.device(device)
        self.tokenizer = open_clip.get_tokenizer(MODEL_NAME)
        self.cache = LRUCache(cache_size)

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    def encode(self, prompts: list[str]) -> Tensor:
        """(B, 1, D) raw embeddings, in the order of `prompts`."""
        found = {p: self.cache.get(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, e in found.items() if e is None]
        # One prompt at a time: a batch's arithmetic differs in the last bits from a single prompt's,
        # and a prompt's embedding must not depend on which prompts were first encoded beside it
        # (it is cached: every later edit, on any worker, must get what a lone encoding gives).
        for p in missing:
            with torch.inference_mode():
                tokens = self.tokenizer([p]).to(self.device)
                found[p] = encode_text(self.model, tokens).float().clone()
            self.cache.put(p, found[p])
        return torch.stack([found[p] for p in prompts])

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
