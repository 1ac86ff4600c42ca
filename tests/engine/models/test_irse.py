"""The IR-SE units of e4e's backbone (engine/models/irse.py): the inference arrangement equals the reference."""

from __future__ import annotations

import pytest
import torch

from ffclip.engine.models.irse import BottleneckIRSE

F32 = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize("in_channel, depth, stride", [(8, 16, 2), (16, 16, 2), (16, 16, 1)])
def test_irse_inference_unit_equals_the_reference(in_channel: int, depth: int, stride: int) -> None:
    torch.manual_seed(0)
    unit = BottleneckIRSE(in_channel, depth, stride).eval()
    with torch.no_grad():
        for m in unit.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics to fold
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, in_channel, 9, 9)
    with torch.enable_grad():
        expected = unit(x).detach()
    with torch.inference_mode():
        got = unit(x)
        again = unit(x)  # the folded weights come from the cache
    torch.testing.assert_close(got, expected, **F32)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    with torch.no_grad():  # a changed BatchNorm invalidates the cache
        unit.res_layer[4].running_var.mul_(2.0)
    with torch.enable_grad():
        expected = unit(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(unit(x), expected, **F32)
