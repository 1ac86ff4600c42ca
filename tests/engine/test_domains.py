"""Issue 16: the paper's other domains — a car or a church in a selection.

The protocol's `domain`, the framing of a selection for the car (4:3 band of a 512² square) and
church (square) generators, the must-show passthrough edits on real photos (PSNR >= 38 dB inside
the mask, bit-identical outside), the tiny car/church networks, the store's per-domain files.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ffclip.app.cli import main
from ffclip.engine.domains import DOMAIN_SPECS, needed_models
from ffclip.engine.face.blend import BlendConfig
from ffclip.engine.imageio import load_image, save_image
from ffclip.engine.pipeline import Pipeline
from ffclip.engine.scene import frame_alpha, frame_scene, render_frame, selection_box
from ffclip.plugin.protocol import BadRequest, EditParams, EditResult
from tests.support.metrics import psnr
from tests.support.paths import SCENES

CAR_PHOTO = SCENES / "trier_aula_palatina.webp"  # cars parked before the Aula Palatina, Trier
CHURCH_PHOTO = SCENES / "reims_cathedral.webp"
CAR_BOX = (388, 608, 117, 52)  # x, y, w, h: the dark saloon in front of the basilica


def _selection(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    sel = np.zeros(shape[:2], np.uint8)
    sel[y : y + h, x : x + w] = 255
    return sel


# --------------------------------------------------------------------------- the protocol


def test_domain_travels_in_the_edit_and_faces_stay_as_they_were():
    face = EditParams.single("smiling")
    assert face.domain == "face" and "domain" not in face.to_message("j", None)  # old daemons see no change
    car = EditParams.single("red car", domain=" Car ")
    message = car.to_message("j", None)
    assert message["domain"] == "car"
    assert EditParams.from_message(message) == car
    assert EditParams.from_message({"prompt": "x"}).domain == "face"  # old clients: faces
    for bad in ("horse", 3, None, ["car"]):
        with pytest.raises(BadRequest, match="domain"):
            EditParams.from_message({"prompt": "x", "domain": bad})
    with pytest.raises(BadRequest, match="faces"):
        EditParams.single("x", faces="largest", domain="church")
    result = EditResult((0, 0, 1, 1), bytes(4), domain="church")
    assert EditResult.from_message(result.to_message(), bytes(4)).domain == "church"


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("domain", ["car", "church"])
def test_the_frame_holds_the_selection_with_room_for_the_seam(domain):
    spec, config = DOMAIN_SPECS[domain], BlendConfig()
    width, height = 1000, 700
    sel = _selection((height, width), (400, 300, 120, 60))
    crop = frame_scene(sel, width, height, spec, config)
    x0, y0, x1, y1 = crop.frame
    assert (x1 - x0) / (y1 - y0) == pytest.approx(spec.frame_aspect)
    assert x0 < 400 and y0 < 300 and x1 > 520 and y1 > 360
    # the crop alpha is 1 over the whole selection, 0 outside the frame (and its padding band)
    u, v = crop.transform.inverse(*np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float)))
    alpha = frame_alpha(u, v, crop.band, crop.open_edges, config)
    assert alpha[sel > 0].min() == pytest.approx(1.0)
    ys, xs = np.nonzero(alpha > 0)
    assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1) and ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1)
    assert not any(crop.open_edges)


def test_a_car_frame_is_the_middle_band_of_the_generators_square():
    spec = DOMAIN_SPECS["car"]
    assert spec.band == (0.125, 0.875) and spec.encoder_input == (256, 192)
    crop = frame_scene(None, 800, 600, spec, BlendConfig())  # the whole 4:3 photo is the frame
    assert crop.frame == (0.0, 0.0, 800.0, 600.0) and all(crop.open_edges)
    assert crop.qsize == 800.0
    assert crop.quad[0].tolist() == [-0.5, -100.5]  # the square reaches 1/8 of its side above the photo
    # rendered at e4e's size, the band is the photo resized (no padding rows)
    photo = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    rendered = render_frame(photo, crop, 256, 192)
    expected = cv2.resize(photo.astype(np.float32), (256, 192), interpolation=cv2.INTER_AREA)
    assert np.abs(rendered.astype(np.float32) - expected).mean() < 12.0


def test_frames_move_inside_the_photo_and_open_their_border_edges():
    spec, config = DOMAIN_SPECS["church"], BlendConfig()
    sel = _selection((500, 900), (0, 100, 80, 300))  # a tall selection on the left border
    crop = frame_scene(sel, 900, 500, spec, config)
    x0, y0, x1, y1 = crop.frame
    assert x0 == 0.0 and x1 > 80 and crop.open_edges[0] and not crop.open_edges[2]
    assert selection_box(sel, 900, 500) == (0, 100, 80, 400)
    with pytest.raises(BadRequest, match="empty"):
        selection_box(np.zeros((500, 900), np.uint8), 900, 500)


# --------------------------------------------------------------------------- must show: passthrough on photos


@pytest.fixture(scope="module")
def passthrough_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, ...]]:
    """`ffclip-engine edit --domain D --editor passthrough`: a car selected in one photo, a church
    photo whole and a church tower selected."""
    out = tmp_path_factory.mktemp("scenes")
    car = load_image(CAR_PHOTO)
    church = load_image(CHURCH_PHOTO)
    cases = {
        "car": (CAR_PHOTO, car, _selection(car.shape, CAR_BOX)),
        "church": (CHURCH_PHOTO, church, None),
        "church-tower": (CHURCH_PHOTO, church, _selection(church.shape, (520, 30, 140, 300))),
    }
    runs = {}
    for name, (path, image, sel) in cases.items():
        args = ["edit", str(path), "x", "-o", str(out / f"{name}.png"), "--editor", "passthrough"]
        args += ["--domain", name.split("-")[0], "--mask-out", str(out / f"{name}.mask.png")]
        if sel is not None:
            save_image(out / f"{name}.sel.png", sel)
            args += ["--selection", str(out / f"{name}.sel.png")]
        assert main(args) == 0, name
        edited, mask = load_image(out / f"{name}.png"), load_image(out / f"{name}.mask.png")[..., 0]
        runs[name] = (image, sel, edited, mask)
    return runs


@pytest.mark.parametrize("name", ["car", "church", "church-tower"])
def test_passthrough_pastes_back_exactly(passthrough_runs, name):
    image, sel, edited, mask = passthrough_runs[name]
    assert edited.shape == image.shape
    assert np.array_equal(edited[mask == 0], image[mask == 0]), "pixels outside the mask changed"
    value = psnr(edited[mask > 0], image[mask > 0])
    assert value >= 38.0, f"PSNR {value:.2f} dB inside the mask"
    if sel is None:
        assert (mask == 255).all()  # a whole-photo church: every pixel, no seam at the borders
    else:
        assert np.array_equal(mask > 0, sel > 0)  # the selection is the edit's extent ...
        assert (mask[sel > 0] == 255).all()  # ... and the frame's fade lies outside it


def test_passthrough_has_no_subpixel_shift(passthrough_runs):
    image, _, edited, mask = passthrough_runs["church-tower"]
    ys, xs = np.nonzero(mask == 255)
    window = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    a, b = (x[window][..., :3].astype(np.float64).mean(axis=2) for x in (image, edited))
    hann = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(a, b, hann)
    assert abs(dx) < 0.05 and abs(dy) < 0.05


def test_a_church_larger_than_its_frame_resolution_still_pastes_back():
    """A 1600 px photo through a 1024² passthrough crop: resampled both ways."""
    image = cv2.resize(load_image(CHURCH_PHOTO), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    result = Pipeline(None, editor="passthrough", domain="church").edit(EditParams.single("x", domain="church"), image)
    assert psnr(result.image, image) >= 38.0
    assert result.faces[0].to_wire()["box"] == [0, 0, 1600, 1200]


# --------------------------------------------------------------------------- tiny networks, the store


def test_models_fetch_names_each_domains_files():
    from ffclip.app.cli.models import expand_domains

    assert needed_models("car") == ("e4e-cars", "ffclip-car", "clip")
    assert expand_domains(["church"]) == ["e4e-church", "ffclip-church", "clip"]
    assert expand_domains(["car", "clip", "arcface"]) == ["e4e-cars", "ffclip-car", "clip", "arcface"]


@pytest.mark.slow
def test_tiny_car_and_church_engines_edit_their_selection():
    from ffclip.engine.inference import Engine, network_bytes
    from ffclip.engine.profiles import profile_for

    face = Engine.load("tiny")
    photo = load_image(CAR_PHOTO)
    sel = _selection(photo.shape, CAR_BOX)
    for domain, (size, n_latent) in {"car": (128, 12), "church": (64, 10)}.items():
        engine = Engine.load("tiny", domain=domain, text=face.text)
        assert (engine.size, engine.n_latent, engine.domain, engine.untrained) == (size, n_latent, domain, True)
        assert engine.describe()["domain"] == domain and engine.text is face.text
        assert engine.nbytes() == network_bytes(profile_for("tiny", domain))
        pipeline = Pipeline(engine)
        params = EditParams.single("a red sports car", domain=domain)
        result = pipeline.edit(params, photo, sel)
        assert result.stages == ["detect", "align", "invert", "encode_text", "map", "synthesize", "blend"]
        assert result.untrained and result.result(params).domain == domain
        assert np.array_equal(result.image[result.mask == 0], photo[result.mask == 0])
        assert not result.mask[sel == 0].any()
        again = pipeline.edit(EditParams.single("a blue car", domain=domain), photo, sel)
        assert again.stages == ["encode_text", "map", "synthesize", "blend"]  # framing and W+ cached
        with pytest.raises(BadRequest, match="domain"):
            pipeline.edit(EditParams.single("x"), photo)
