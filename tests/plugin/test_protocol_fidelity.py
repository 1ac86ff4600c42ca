"""`fidelity` in the edit request (issue 29): standard (e4e) or high (HyperStyle); validated where
EditParams is built, omitted on the wire when standard, echoed in the result; the status says
which fidelities an engine takes."""

from __future__ import annotations

import pytest

from ffclip.plugin.protocol import BadRequest, EditParams, EditResult, ImageSpec, StatusMessage


def test_fidelity_defaults_to_standard_and_travels_only_when_high() -> None:
    plain = EditParams.single("smiling")
    assert plain.fidelity == "standard"
    assert "fidelity" not in plain.to_message("j1", ImageSpec(64, 64))  # an old engine reads it as before
    high = EditParams.single("smiling", fidelity=" HIGH ")
    message = high.to_message("j1", ImageSpec(64, 64))
    assert high.fidelity == "high" and message["fidelity"] == "high"
    assert EditParams.from_message(message).fidelity == "high"
    assert EditParams.from_message({"prompt": "x"}).fidelity == "standard"


@pytest.mark.parametrize("value", ["ultra", "", None, 1, True, ["high"]])
def test_an_unknown_fidelity_is_a_bad_request(value: object) -> None:
    with pytest.raises(BadRequest) as info:
        EditParams.from_message({"prompt": "smiling", "fidelity": value})
    assert info.value.code == "bad_request" and "'fidelity' must be one of standard, high" in info.value.message
    with pytest.raises(BadRequest):
        EditParams.single("smiling", fidelity=value)


def test_the_result_echoes_the_fidelity() -> None:
    result = EditResult(region=(0, 0, 1, 1), rgba=bytes(4), fidelity="high")
    assert EditResult.from_message(result.to_message(), bytes(4)).fidelity == "high"
    older = result.to_message()
    del older["fidelity"]  # an engine from before the field
    assert EditResult.from_message(older, bytes(4)).fidelity == "standard"


def test_the_status_says_which_fidelities_the_engine_takes() -> None:
    assert StatusMessage({"models": {"fidelities": ["standard", "high"]}}).fidelities == ("standard", "high")
    assert StatusMessage({"models": {"fidelities": ["standard"]}}).fidelities == ("standard",)
    assert StatusMessage({"models": {"profile": "real"}}).fidelities == ("standard",)  # an older engine
    assert StatusMessage({}).fidelities == ("standard",)
