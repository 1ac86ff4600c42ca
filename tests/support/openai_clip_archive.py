"""A TorchScript archive laid out like OpenAI's CLIP `ViT-B-32.pt`, at tiny widths, for the tests.

The module tree and attribute names mirror OpenAI's `clip/model.py` (CLIP → visual: VisionTransformer,
transformer: Transformer → resblocks → ResidualAttentionBlock(attn, ln_1, mlp.c_fc/c_proj, ln_2),
token_embedding, positional_embedding, ln_final, text_projection, logit_scale), and, as in OpenAI's
archive, `input_resolution`, `context_length` and `vocab_size` are tensors of its state_dict. It is
traced with torch.jit.trace (as OpenAI's archive was) and written with torch.jit.save.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from torch import nn

EMBED, WIDTH, LAYERS, PATCH, IMAGE, CONTEXT, VOCAB = 16, 32, 1, 8, 16, 7, 50


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask  # a plain attribute, as in OpenAI's model: not in the state_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        scale = WIDTH**-0.5
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(scale * torch.randn((IMAGE // PATCH) ** 2 + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH, LAYERS, 2)
        self.ln_post = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(scale * torch.randn(WIDTH, EMBED))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu_(1)
        self.register_buffer("input_resolution", torch.tensor(IMAGE))
        self.register_buffer("context_length", torch.tensor(CONTEXT))
        self.register_buffer("vocab_size", torch.tensor(VOCAB))
        self.visual = VisionTransformer()
        self.transformer = Transformer(WIDTH, LAYERS, 2, mask)
        self.token_embedding = nn.Embedding(VOCAB, WIDTH)
        self.positional_embedding = nn.Parameter(torch.randn(CONTEXT, WIDTH) * 0.01)
        self.ln_final = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Parameter(torch.randn(WIDTH, EMBED) * WIDTH**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.token_embedding(text) + self.positional_embedding
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        text_features = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection
        return self.visual(image), text_features * self.logit_scale.exp()


def open_clip_twin() -> OpenClipCLIP:
    """open_clip's CLIP at the same tiny widths (QuickGELU): the layout the archive must map to."""
    return OpenClipCLIP(
        embed_dim=EMBED,
        vision_cfg=CLIPVisionCfg(layers=LAYERS, width=WIDTH, patch_size=PATCH, image_size=IMAGE, head_width=16),
        text_cfg=CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=WIDTH, heads=2, layers=LAYERS),
        quick_gelu=True,
    )


def save_archive(path: Path, seed: int = 0, half: bool = True) -> CLIP:
    """Trace the tiny CLIP (float16 weights, as OpenAI ships them, when `half`) and torch.jit.save it."""
    torch.manual_seed(seed)
    model = CLIP().eval()
    inputs = (torch.zeros(1, 3, IMAGE, IMAGE), torch.arange(CONTEXT).unsqueeze(0) % VOCAB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; OpenAI's archive is what it is
        traced = torch.jit.trace(model, inputs)
        if half:
            traced = traced.half()  # the weights; the traced code is never run here
        torch.jit.save(traced, str(path))
    return model
