"""The engine's reading of client messages (plugin/protocol.py, bridge/messages.py), as units.

tests/bridge/test_server_requests.py checks every field at its limits over the wire; these tests call the
parser directly, so that each rule is checked in milliseconds (and by the mutation run of
plugin/protocol.py, issue 20). The expectations are docs/protocol.md's table, written out here: a
test that imported the module's constants would agree with whatever the module says.
"""

from __future__ import annotations

import math
import uuid

import pytest

from ffclip.bridge import messages
from ffclip.plugin import protocol as p
from ffclip.plugin.protocol import Attribute, BadRequest, EditParams, EditResult, ImageSpec, ProtocolViolation


def refused(call, *args, code: str = "bad_request", match: str | None = None) -> BadRequest:
    with pytest.raises(BadRequest, match=match) as info:
        call(*args)
    assert info.value.code == code
    return info.value


# --------------------------------------------------------------------------- field readers


@pytest.mark.parametrize("value", [0, 1, -3, 2.5, -0.0, 10**6])
def test_a_number_is_any_finite_int_or_float(value) -> None:
    assert p._number(value, "x") == value and type(p._number(value, "x")) is float


@pytest.mark.parametrize("value", [True, False, "1", None, [1], math.nan, math.inf, -math.inf])
def test_a_number_is_not_a_bool_a_string_or_infinite(value) -> None:
    refused(p._number, value, "x", match="'x' must be a finite number")


def test_ints_and_bools_are_exactly_their_type() -> None:
    assert p._int(7, "n") == 7 and p._int(0, "n") == 0
    for value in (True, 7.0, "7", None):
        refused(p._int, value, "n", match="'n' must be an integer")
    assert p._bool(True, "b") is True and p._bool(False, "b") is False
    for value in (1, 0, "true", None):
        refused(p._bool, value, "b", match="'b' must be true or false")


def test_domains() -> None:
    assert [p.parse_domain(d) for d in ("face", " CAR ", "Church")] == ["face", "car", "church"]
    for value in ("", "cars", "horse", None, 1, ["car"]):
        refused(p.parse_domain, value, match="'domain' must be one of face, car, church")


def test_faces() -> None:
    assert p.parse_faces("all") == "all" and p.parse_faces(" Largest ") == "largest"
    assert p.parse_faces([0]) == (0,) and p.parse_faces((3, 1)) == (3, 1)
    assert p.parse_faces(list(range(64))) == tuple(range(64))  # at most 64 indices
    assert p.parse_faces("0, 2,") == (0, 2)  # the command line's text form
    for value in ([], list(range(65)), [-1], [0, -2], [True], [0.0], ["0"], "none", "", None, 1.0, {"0": 0}):
        refused(p.parse_faces, value, match="faces")


# --------------------------------------------------------------------------- attributes and edits


def test_an_attribute_is_a_prompt_and_a_strength_in_range() -> None:
    assert Attribute("  grey \t hair ") == Attribute("grey hair", 1.0)  # runs of blanks are one space
    assert Attribute("x", -4).strength == -4.0 and Attribute("x", 4).strength == 4.0
    assert type(Attribute("x", 2).strength) is float
    assert len(Attribute("p" * 1000).prompt) == 1000
    refused(Attribute, "p" * 1001, match="longer than 1000 characters")
    for prompt in ("", " \t\n", None, 5):
        refused(Attribute, prompt, match="non-empty 'prompt'")
    for strength in (4.0001, -4.0001, 100):
        refused(Attribute, "x", strength, match="between -4 and 4")
    refused(Attribute, "x", "1", match="finite number")


def test_the_command_line_form_of_an_attribute() -> None:
    assert Attribute.parse("grey hair=1.2") == Attribute("grey hair", 1.2)
    assert Attribute.parse("smiling") == Attribute("smiling", 1.0)
    assert Attribute.parse("a=b") == Attribute("a=b", 1.0)  # words after "=" belong to the prompt
    assert Attribute.parse("x=y=-0.5") == Attribute("x=y", -0.5)  # the last "=" counts


def test_an_edit_entry_on_the_wire() -> None:
    assert Attribute.from_message({"prompt": "smile"}) == Attribute("smile", 1.0)
    assert Attribute.from_message({"prompt": "smile", "strength": -2}) == Attribute("smile", -2.0)
    for value in ("smile", ["smile"], {"strength": 1}, {"prompt": 3}, None):
        refused(Attribute.from_message, value, match="each entry of 'edits'")


def test_edit_params_hold_one_to_four_attributes() -> None:
    one = Attribute("a")
    assert EditParams((one,) * 4).edits == (one,) * 4
    assert EditParams([one]).edits == (one,)  # a list becomes a tuple
    for edits in ((), (one,) * 5, ("a",), "a", None, (one, "b")):
        refused(EditParams, edits, match="'edits' must hold 1 to 4 entries")
    for name in ("preview", "selection", "supersede"):
        with pytest.raises(BadRequest, match=f"'{name}' must be true or false"):
            EditParams((one,), **{name: 1})
    assert EditParams((one,), faces=[1], domain="face").faces == (1,)
    assert EditParams((one,), domain="car").faces == "all"
    for faces in ("largest", [0], (2, 3)):
        with pytest.raises(BadRequest, match="a car edit takes the selection"):
            EditParams((one,), faces=faces, domain="car")


def test_the_label_shows_strengths_other_than_one() -> None:
    assert EditParams((Attribute("smiling", 0.8), Attribute("grey hair"))).label == "smiling \u00d70.8, grey hair"


def wire(**fields) -> dict:
    return {"type": "edit", "id": "j", **fields}


def test_an_edit_message_is_read_field_by_field() -> None:
    params = EditParams.from_message(
        wire(
            edits=[{"prompt": "smiling", "strength": 0.8}, {"prompt": "grey hair"}],
            faces=[0, 2],
            preview=True,
            selection={"format": "a8"},
            supersede=True,
            domain="face",
        )
    )
    assert params == EditParams(
        (Attribute("smiling", 0.8), Attribute("grey hair", 1.0)), (0, 2), True, True, True, "face"
    )
    defaults = EditParams.from_message(wire(prompt="smiling"))
    assert defaults == EditParams((Attribute("smiling", 1.0),), "all", False, False, False, "face")
    assert EditParams.from_message(wire(prompt="s", strength=-1)).edits == (Attribute("s", -1.0),)
    assert EditParams.from_message(wire(prompt="s", selection=None)).selection is False  # null: absent


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"edits": [{"prompt": "a"}], "prompt": "b"}, "either 'edits' or 'prompt', not both"),
        ({"edits": {"prompt": "a"}}, "'edits' must be a list of 1 to 4 objects"),
        ({"edits": "a"}, "'edits' must be a list"),
        ({"edits": []}, "'edits' must hold 1 to 4"),
        ({"edits": [{"prompt": "a"}] * 5}, "'edits' must hold 1 to 4"),
        ({}, "'prompt' must be a non-empty string"),
        ({"prompt": ["a"]}, "'prompt' must be a non-empty string"),
        ({"prompt": "a", "selection": "a8"}, "'selection' must be"),
        ({"prompt": "a", "selection": {"format": "y8"}}, "'selection' must be"),
        ({"prompt": "a", "selection": {}}, "'selection' must be"),
        ({"prompt": "a", "preview": "false"}, "'preview' must be true or false"),
        ({"prompt": "a", "supersede": 1}, "'supersede' must be true or false"),
        ({"prompt": "a", "faces": 0}, "'faces' must be"),  # the table: a list of ints, not an int
        ({"prompt": "a", "faces": [0.0]}, "faces"),
        ({"prompt": "a", "domain": "horse"}, "'domain' must be one of"),
    ],
)
def test_a_bad_edit_message_is_refused(fields: dict, match: str) -> None:
    refused(EditParams.from_message, wire(**fields), match=match)


def test_an_edit_message_round_trips() -> None:
    params = EditParams((Attribute("a", 0.5), Attribute("b", -1)), (1, 3), preview=True, selection=True, supersede=True)
    message = params.to_message("j", ImageSpec(64, 48))
    assert EditParams.from_message(message) == params
    assert message["selection"] == {"format": "a8"} and message["image"] == ImageSpec(64, 48).to_message()
    reuse = params.to_message("j", None)
    assert reuse["reuse_image"] is True and "image" not in reuse and "selection" not in reuse


# --------------------------------------------------------------------------- the image


def test_an_image_spec() -> None:
    assert ImageSpec.from_message({"width": 16, "height": 20, "format": "png"}, 1000) == ImageSpec(16, 20, "png")
    assert ImageSpec.from_message({"width": 20, "height": 50, "format": "rgba8"}, 1000).pixels == 1000
    for value in (None, [16, 16, "rgba8"], "16x16"):
        refused(ImageSpec.from_message, value, 1000, match="'image' must be an object")
    for image in ({"width": 16.0, "height": 16, "format": "rgba8"}, {"height": 16, "format": "rgba8"}):
        refused(ImageSpec.from_message, image, 1000, match="'image.width' must be an integer")
    refused(ImageSpec.from_message, {"width": 16, "height": True, "format": "rgba8"}, 1000, match="image.height")
    for fmt in ("jpeg", "RGBA8", None):
        refused(ImageSpec.from_message, {"width": 16, "height": 16, "format": fmt}, 1000, match="image.format")


def test_image_sizes() -> None:
    p.check_image_size(16, 16, 256)  # the smallest image, exactly at the limit
    p.check_image_size(16, 10**6, None)  # no limit
    p.check_image_size(16, 10**6, 0)  # 0: no limit either
    refused(p.check_image_size, 16, 17, 256, code="too_large", match="16x17 = 0.0 MP exceeds")
    error = refused(p.check_image_size, 4000, 3000, 10_000_000, code="too_large")
    assert error.message == ("image of 4000x3000 = 12.0 MP exceeds the engine's limit of 10.0 MP (--max-pixels)")
    assert refused(p.check_image_size, 1600, 1000, 1_500_000, code="too_large").message == (
        "image of 1600x1000 = 1.6 MP exceeds the engine's limit of 1.5 MP (--max-pixels)"
    )
    for width, height in ((16, 1), (1, 16)):  # one pixel high or wide: small, not empty
        assert refused(p.check_image_size, width, height, None, code="bad_image").message == (
            f"image of {width}x{height} is too small (at least 16 px a side)"
        )
    assert refused(p.check_image_size, 15, 16, None, code="bad_image").message == (
        "image of 15x16 is too small (at least 16 px a side)"
    )
    refused(p.check_image_size, 16, 15, None, code="bad_image", match="too small")
    for width, height in ((0, 16), (16, 0), (-16, 16), (16, -16), (0, 0)):
        error = refused(p.check_image_size, width, height, 10**9, code="bad_image")
        assert error.message == f"image size {width}x{height} is empty"
    refused(p.check_image_size, -16, -16, 100, code="bad_image", match="empty")  # before the area rule


# --------------------------------------------------------------------------- messages and ids


def test_a_text_frame_is_a_json_object_with_a_string_type() -> None:
    assert p.decode('{"type": "status"}') == {"type": "status"}
    refused(p.decode, "{oops", match="malformed JSON")
    for text in ("[1, 2]", '"edit"', "null"):
        refused(p.decode, text, match="a message must be a JSON object")
    for text in ('{"id": "x"}', '{"type": 5}', '{"type": null}'):
        refused(p.decode, text, match="a message needs a string 'type'")


def test_job_ids() -> None:
    assert p.job_id_of({"id": "i" * 128}) == "i" * 128 and p.job_id_of({"id": "x"}) == "x"
    refused(p.job_id_of, {"id": "i" * 129}, match="'id' is longer than 128 characters")
    for value in ("", None, 7, ["x"]):
        refused(p.job_id_of, {"id": value}, match="'id' must be a non-empty string")
    refused(p.job_id_of, {}, match="'id' must be a non-empty string")
    for fine in (str(uuid.uuid4()), "job-1.preview:2_a", "Z9"):
        assert p.job_id_of({"id": fine}) == fine
    for forged in ("x\n2026-12-06 INFO ffclip.bridge: done", "x\n", "  ", "a b", "é", "a/b", "x\x00", "<job>"):
        with pytest.raises(p.BadRequest, match="letters, digits") as refusal:
            p.job_id_of({"id": forged})
        assert forged not in refusal.value.message  # never echoed (a log line, an error in a dialog)


# --------------------------------------------------------------------------- the engine's announcement


def test_an_edit_announcement_and_its_frames() -> None:
    image = {"width": 16, "height": 16, "format": "rgba8"}
    plain = messages.parse_edit(wire(prompt="a", image=image), 1000)
    assert plain.id == "j" and plain.image == ImageSpec(16, 16) and plain.frames == 1
    masked = messages.parse_edit(wire(prompt="a", image=image, selection={"format": "a8"}), 1000)
    assert masked.frames == 2 and masked.params.selection
    reuse = messages.parse_edit(wire(prompt="a", reuse_image=True), 1000)
    assert reuse.image is None and reuse.frames == 0
    assert messages.parse_edit(wire(prompt="a", image=image, reuse_image=False), 1000).frames == 1
    for fields in ({"reuse_image": True, "image": image}, {"reuse_image": True, "selection": {"format": "a8"}}):
        error = refused(messages.parse_edit, wire(prompt="a", **fields), 1000, match="send neither")
        assert error.job_id == "j"
    refused(messages.parse_edit, wire(prompt="a", reuse_image=1), 1000, match="'reuse_image' must be true or false")
    error = refused(messages.parse_edit, wire(prompt="a", image=image), 100, code="too_large")
    assert error.job_id == "j"  # every refusal carries the job's id, so the client can tell which
    refused(messages.parse_edit, {"type": "edit", "prompt": "a"}, 1000, match="'id'")


def test_a_refused_announcement_still_counts_its_frames() -> None:
    """Judged leniently (a present field counts), so the refused frames are skipped in step."""
    assert messages.announced_frames({}) == 0
    assert messages.announced_frames({"image": "junk"}) == 1
    assert messages.announced_frames({"image": {}, "selection": "junk"}) == 2
    assert messages.announced_frames({"selection": {}}) == 1
    assert messages.announced_frames({"image": None, "selection": None}) == 0


# --------------------------------------------------------------------------- the client reads a result


def result_message(**fields) -> dict:
    message = {"type": "result", "id": "j", "region": [1, 2, 3, 4], "format": "rgba8"}
    message.update(fields)
    return message


def test_a_result_is_read_with_its_frame() -> None:
    full = EditResult(
        (1, 2, 3, 4),
        bytes(48),
        faces=[{"index": 0}],
        edits=(Attribute("a", 0.5),),
        stages=["map", "blend"],
        preview=True,
        size=256,
        untrained=True,
        seconds=1.25,
        id="j",
        domain="car",
    )
    assert EditResult.from_message(full.to_message(), bytes(48)) == full
    bare = EditResult.from_message(result_message(), bytes(48))
    assert bare == EditResult((1, 2, 3, 4), bytes(48), id="j")
    assert bare.skipped == list(p.STAGES)
    odd = EditResult.from_message(result_message(stages=["map", "dream"], domain="horse", size=None), bytes(48))
    assert odd.stages == ["map"] and odd.domain == "face" and odd.size == 0
    assert EditResult.from_message(result_message(region=[0, 0, 0, 0]), b"").region == (0, 0, 0, 0)
    # a frame larger than CPython's cached small ints: its length is compared by value, not identity
    assert EditResult.from_message(result_message(region=[5, 6, 30, 20]), bytes(2400)).region == (5, 6, 30, 20)


@pytest.mark.parametrize(
    "region", [None, [1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, -4], [-1, 2, 3, 4], [1, 2, 3.0, 4], [1, True, 3, 4]]
)
def test_a_result_with_a_bad_region_is_a_protocol_violation(region) -> None:
    with pytest.raises(ProtocolViolation, match="invalid region"):
        EditResult.from_message(result_message(region=region), bytes(48))


def test_a_result_frame_of_the_wrong_size_or_bad_edits_is_a_protocol_violation() -> None:
    for frame in (bytes(47), bytes(49), b""):
        with pytest.raises(ProtocolViolation, match=f"result frame has {len(frame)} bytes"):
            EditResult.from_message(result_message(), frame)
    with pytest.raises(ProtocolViolation, match="result has invalid edits: 'strength' must be between"):
        EditResult.from_message(result_message(edits=[{"prompt": "a", "strength": 9}]), bytes(48))
