"""IR-SE-50 ArcFace backbone (`model_ir_se50.pth`, TreB1eN layout), for the identity loss and the
identity-similarity metric: a 112×112 face in [-1, 1] -> an l2-normalised 512-d feature."""

from __future__ import annotations

from torch import Tensor, nn

from .irse import STAGES, l2_norm, make_body, make_input_layer, stage_specs


class Backbone(nn.Module):
    def __init__(
        self,
        input_size: int = 112,
        num_layers: int = 50,
        mode: str = "ir_se",
        drop_ratio: float = 0.6,
        affine: bool = True,
    ) -> None:
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError("input_size must be 112 or 224")
        self.input_layer = make_input_layer(64)
        spatial = 7 if input_size == 112 else 14
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(512 * spatial * spatial, 512),
            nn.BatchNorm1d(512, affine=affine),
        )
        self.body = make_body(stage_specs(STAGES[num_layers], 64), mode)

    def forward(self, x: Tensor) -> Tensor:
        return l2_norm(self.output_layer(self.body(self.input_layer(x))))
