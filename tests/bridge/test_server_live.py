"""The live-editing additions of protocol 1 (docs/protocol.md): `edits` (1–4 attributes), Δw cached
per (photo, face, prompt), `supersede`, `reuse_image` and the engine-chosen preview resolution.

Protocol rules run against the fake backend (fast, deterministic); the cache and the resolution
against the tiny engine, in-process."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from ffclip.bridge.fake import FakeBackend
from ffclip.bridge.testing import running_server
from ffclip.plugin.client import EngineClient
from ffclip.plugin.protocol import MAX_EDITS, STAGES, Attribute, BadRequest, EditParams, ImageSpec
from tests.support.raw import PHOTO, Raw

TWO = [{"prompt": "smiling", "strength": 0.8}, {"prompt": "grey hair", "strength": 1.2}]


@pytest.fixture(scope="module")
def server():
    with running_server(lambda: FakeBackend(0.0)) as thread:
        yield thread


@pytest.fixture(scope="module")
def slow_server():
    """Stages of 0.1 s: a burst of requests finds jobs waiting and one running."""
    with running_server(lambda: FakeBackend(0.1), max_queue=16) as thread:
        yield thread


def edit_message(job_id: str, **fields) -> dict:
    message = {"type": "edit", "id": job_id, "faces": "all", "preview": True}
    message.update(fields)
    return message


# --------------------------------------------------------------------------- edits


def test_several_attributes_are_one_edit_and_the_result_echoes_them(server):
    raw = Raw(server.url)
    job = uuid.uuid4().hex
    raw.send(edit_message(job, edits=TWO, image={"width": 128, "height": 96, "format": "rgba8"}))
    raw.binary(PHOTO.tobytes())
    _, result, _ = raw.until_end(job)
    assert result["type"] == "result" and result["edits"] == TWO
    # the old form is a one-entry list
    _, single, _ = raw.until_end(raw.edit(prompt="smiling", strength=0.5))
    assert single["edits"] == [{"prompt": "smiling", "strength": 0.5}]
    raw.close()


BAD_EDITS = [
    ([], "empty"),
    ([{"prompt": f"p{i}", "strength": 1.0} for i in range(MAX_EDITS + 1)], "too many"),
    ([{"strength": 1.0}], "no prompt"),
    ([{"prompt": "", "strength": 1.0}], "empty prompt"),
    ([{"prompt": 3}], "prompt not a string"),
    ([{"prompt": "smiling", "strength": "1"}], "strength as text"),
    ([{"prompt": "smiling", "strength": True}], "strength as bool"),
    ([{"prompt": "smiling", "strength": 9.0}], "strength out of range"),
    ([{"prompt": "x" * 1001}], "prompt too long"),
    (["smiling"], "entry not an object"),
    ({"prompt": "smiling"}, "not a list"),
]


@pytest.mark.parametrize("edits, why", BAD_EDITS, ids=[why for _, why in BAD_EDITS])
def test_a_bad_list_is_a_bad_request_and_the_connection_stays(server, edits, why):
    raw = Raw(server.url)
    job = uuid.uuid4().hex
    raw.send(edit_message(job, edits=edits, image={"width": 128, "height": 96, "format": "rgba8"}))
    raw.binary(PHOTO.tobytes())  # the announced frame is read and discarded
    error = raw.error()
    assert error["code"] == "bad_request" and error["id"] == job, why
    _, after, _ = raw.until_end(raw.edit())  # the same connection still edits
    assert after["type"] == "result"
    raw.close()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_strength_is_a_bad_request(server, number):
    raw = Raw(server.url)
    job = uuid.uuid4().hex
    text = json.dumps(edit_message(job, image={"width": 128, "height": 96, "format": "rgba8"}))
    raw.send(text[:-1] + f', "edits": [{{"prompt": "smiling", "strength": {number}}}]}}')
    raw.binary(PHOTO.tobytes())
    error = raw.error()
    assert error["code"] == "bad_request" and error["id"] == job
    raw.close()


def test_prompt_and_edits_together_are_refused(server):
    raw = Raw(server.url)
    job = raw.announce(128, 96, edits=TWO)  # announce() also sends "prompt"
    raw.binary(PHOTO.tobytes())
    error = raw.error()
    assert error["code"] == "bad_request" and error["id"] == job
    raw.close()


def test_edit_params_are_validated_where_they_are_built():
    with pytest.raises(BadRequest):
        EditParams(())
    with pytest.raises(BadRequest):
        EditParams(tuple(Attribute(f"p{i}") for i in range(MAX_EDITS + 1)))
    with pytest.raises(BadRequest):
        Attribute("smiling", float("nan"))
    params = EditParams((Attribute(" smiling  ", 0.8), Attribute("grey hair", 1.2)), faces="0,2")
    message = params.to_message("j", ImageSpec(10, 20))
    assert EditParams.from_message(message) == params and params.faces == (0, 2)
    assert params.prompts == ("smiling", "grey hair") and params.label == "smiling \u00d70.8, grey hair \u00d71.2"


# --------------------------------------------------------------------------- supersede


def _burst(raw: Raw, count: int, supersede: bool) -> list[str]:
    return [raw.edit(supersede=supersede) for _ in range(count)]


def _ends(raw: Raw, jobs: list[str]) -> dict[str, list[dict]]:
    """Every message until each job has ended; job -> its terminal messages (the result's frame read)."""
    ends: dict[str, list[dict]] = {job: [] for job in jobs}
    while not all(ends.values()):
        message = raw.json(timeout=60)
        if message["type"] in ("result", "error", "cancelled"):
            ends[message["id"]].append(message)
            if message["type"] == "result":
                raw.ws.recv(20)
    assert raw.quiet(0.5)  # nothing after: no second terminal message
    return ends


def test_a_burst_of_ten_superseding_requests_leaves_one_result(slow_server):
    raw = Raw(slow_server.url)
    jobs = _burst(raw, 10, supersede=True)
    ends = _ends(raw, jobs)
    assert all(len(e) == 1 for e in ends.values())  # exactly one terminal message each
    assert ends[jobs[-1]][0]["type"] == "result"
    assert all(ends[job][0]["type"] == "cancelled" for job in jobs[:-1])
    raw.close()


def test_without_supersede_a_burst_runs_every_request(slow_server):
    raw = Raw(slow_server.url)
    jobs = _burst(raw, 4, supersede=False)
    ends = _ends(raw, jobs)
    assert [ends[job][0]["type"] for job in jobs] == ["result"] * 4
    raw.close()


def test_supersede_touches_only_the_same_connection(slow_server):
    other, raw = Raw(slow_server.url), Raw(slow_server.url)
    theirs = other.edit()
    mine = raw.edit(supersede=True)
    assert _ends(other, [theirs])[theirs][0]["type"] == "result"
    assert _ends(raw, [mine])[mine][0]["type"] == "result"
    other.close()
    raw.close()


# --------------------------------------------------------------------------- reuse_image


def test_reuse_image_edits_the_previous_frames_again(server):
    raw = Raw(server.url)
    selection = np.zeros(PHOTO.shape[:2], np.uint8)
    selection[:, :64] = 255
    first = raw.announce(128, 96, selection={"format": "a8"})
    raw.binary(PHOTO.tobytes())
    raw.binary(selection.tobytes())
    _, result, rgba = raw.until_end(first)
    again = uuid.uuid4().hex
    raw.send(edit_message(again, prompt="smiling", reuse_image=True))  # no frames follow
    _, reused, rgba_again = raw.until_end(again)
    assert reused["type"] == "result" and reused["region"] == result["region"] and rgba_again == rgba
    assert "detect" in reused["skipped"]  # the same photo: the cache knows it
    raw.close()


@pytest.mark.parametrize(
    "fields",
    [
        {"reuse_image": True},  # nothing to reuse on a new connection
        {"reuse_image": True, "image": {"width": 128, "height": 96, "format": "rgba8"}},
        {"reuse_image": True, "selection": {"format": "a8"}},
        {"reuse_image": "yes"},
    ],
)
def test_bad_reuse_is_a_bad_request(server, fields):
    raw = Raw(server.url)
    job = uuid.uuid4().hex
    raw.send(edit_message(job, prompt="smiling", **fields))
    for _ in range(("image" in fields) + ("selection" in fields)):
        raw.binary(PHOTO.tobytes())  # announced frames are read and discarded
    error = raw.error()
    assert error["code"] == "bad_request" and error["id"] == job
    raw.close()


def test_the_client_reuses_its_image(server):
    with EngineClient(server.url, timeout=20) as client:
        first = client.edit(EditParams.single("smiling"), PHOTO.tobytes(), ImageSpec(128, 96))
        again = client.edit(EditParams.single("smiling", 0.3, supersede=True), None, None)
        assert again.region == first.region and again.edits == (Attribute("smiling", 0.3),)


# --------------------------------------------------------------------------- the tiny engine


@pytest.fixture(scope="module")
def tiny_server():
    from ffclip.bridge.domains import load_engine_backend

    with running_server(lambda: load_engine_backend("tiny", None, "cpu", "model", 40_000_000)) as thread:
        yield thread


@pytest.fixture(scope="module")
def astronaut(photos_dir) -> tuple[bytes, ImageSpec]:
    from PIL import Image

    image = np.asarray(Image.open(photos_dir / "astronaut.png").convert("RGBA"))
    return np.ascontiguousarray(image).tobytes(), ImageSpec(image.shape[1], image.shape[0])


def test_new_strengths_run_only_synthesize_and_blend(tiny_server, astronaut):
    frame, spec = astronaut
    two = EditParams((Attribute("a smiling face", 0.8), Attribute("grey hair", 1.2)), faces="largest", preview=True)
    with EngineClient(tiny_server.url, timeout=120) as client:
        first = client.edit(two, frame, spec)
        assert first.stages == list(STAGES)
        strengths = EditParams((Attribute("a smiling face", 0.2), Attribute("grey hair", -0.4)), "largest", True)
        again = client.edit(strengths, None, None)
        assert again.stages == ["synthesize", "blend"]
        assert again.skipped == ["detect", "align", "invert", "encode_text", "map"]
        new_prompt = EditParams((Attribute("a smiling face", 0.2), Attribute("a beard", 1.0)), "largest", True)
        assert client.edit(new_prompt, None, None).stages == ["encode_text", "map", "synthesize", "blend"]


def test_the_engine_chooses_the_preview_resolution(tiny_server, astronaut):
    frame, spec = astronaut
    with EngineClient(tiny_server.url, timeout=120) as client:
        preview = client.edit(EditParams.single("a smiling face", faces="largest", preview=True), frame, spec)
        full = client.edit(EditParams.single("a smiling face", faces="largest"), None, None)
        status = client.status()
    assert preview.preview and preview.size == 64  # the tiny profile's CPU preview
    assert not full.preview and full.size == status["models"]["size"] == 256
    assert preview.untrained and full.untrained
