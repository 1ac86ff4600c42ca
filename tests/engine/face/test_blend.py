"""Paste-back pieces of engine/face/blend.py on synthetic, axis-aligned faces with known answers:
the crop alpha, the inverse warp (pixel-exact on ramps, area-filtered when minified), the seam colour
matching and the premultiplied compositor. No photos, no torch: the fast first line of the blend's
mutation run (tools/mutate.py); the pipeline tests check the same code on real photos.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffclip.engine.face.align import AlignTransform
from ffclip.engine.face.blend import (
    BlendConfig,
    Compositor,
    FacePaste,
    _gaussian,
    _prefilter,
    crop_alpha,
    match_colours,
    warp_to_photo,
)

DEFAULT = BlendConfig()


def square(x0: float, y0: float, q: float) -> AlignTransform:
    """A crop whose (u, v) square covers photo index coordinates [x0, x0 + q] x [y0, y0 + q]."""
    quad = np.array([[x0, y0], [x0, y0 + q], [x0 + q, y0 + q], [x0 + q, y0]], dtype=np.float64)
    return AlignTransform(quad=quad, qsize=q)


# --- crop alpha ----------------------------------------------------------------------------------


def _alpha_at(d: float, config: BlendConfig = DEFAULT) -> float:
    """crop_alpha where the distance to the nearest crop edge is d (on the horizontal centre line)."""
    return float(crop_alpha(np.array([d]), np.array([0.5]), config)[0])


def test_crop_alpha_is_zero_in_the_margin_one_inside_and_a_smoothstep_between() -> None:
    m, f = DEFAULT.crop_margin, DEFAULT.crop_feather
    assert _alpha_at(0.0) == 0.0 and _alpha_at(m) == 0.0
    assert _alpha_at(m + f) == 1.0 and _alpha_at(0.5) == 1.0
    # smoothstep t²(3 − 2t): 0.15625 at t = 1/4, 0.5 at 1/2, 0.84375 at 3/4
    assert _alpha_at(m + 0.25 * f) == pytest.approx(0.15625, abs=1e-6)
    assert _alpha_at(m + 0.5 * f) == pytest.approx(0.5, abs=1e-6)
    assert _alpha_at(m + 0.75 * f) == pytest.approx(0.84375, abs=1e-6)
    assert crop_alpha(np.array([0.3]), np.array([0.3]), DEFAULT).dtype == np.float32


@given(u=st.floats(-0.2, 1.2), v=st.floats(-0.2, 1.2))
def test_crop_alpha_depends_on_the_distance_to_the_nearest_edge_only(u: float, v: float) -> None:
    a = crop_alpha(np.array([u, 1 - u, v, 1 - v]), np.array([v, v, u, u]), DEFAULT)
    assert np.allclose(a, a[0], atol=1e-6)  # mirrored and transposed: the same
    d = min(u, 1 - u, v, 1 - v)
    assert 0.0 <= a[0] <= 1.0
    assert (a[0] == 0.0) == (d <= DEFAULT.crop_margin)


# --- the inverse warp ----------------------------------------------------------------------------

PHOTO = (200, 160)  # width, height


def test_a_ramp_lands_pixel_exactly() -> None:
    """Crop pixel x of an S-wide ramp has value x; photo pixel i lies at u = (i − x0)/q, so it must get
    u·S − 0.5: no half-pixel shift, no flip, the right scale."""
    t, s = square(40.0, 30.0, 100.0), 64
    ramp = np.broadcast_to(np.arange(s, dtype=np.float32)[None, :, None], (s, s, 3)).copy()
    paste = warp_to_photo(t, ramp, None, PHOTO, DEFAULT)
    x, y, w, h = paste.region
    assert (x, y, w, h) == t.photo_region(*PHOTO) == (38, 28, 105, 105)
    px = np.arange(x, x + w, dtype=np.float64)
    expected = (px - 40.0) / 100.0 * s - 0.5
    inner = slice(10, 95)  # away from the crop's border, where the cubic kernel reaches outside
    # cv2.remap quantises coordinates to 1/32 px: a few hundredths; a half-pixel shift would be 0.5
    np.testing.assert_allclose(paste.content[50, inner, 0], expected[inner], atol=0.06)
    np.testing.assert_allclose(paste.content[50, inner, 2], expected[inner], atol=0.06)
    transposed = np.ascontiguousarray(ramp.transpose(1, 0, 2))
    down = warp_to_photo(t, transposed, None, PHOTO, DEFAULT).content
    py = np.arange(y, y + h, dtype=np.float64)
    np.testing.assert_allclose(down[inner, 50, 1], ((py - 30.0) / 100.0 * s - 0.5)[inner], atol=0.06)


def test_the_alpha_is_the_crop_alpha_at_each_photo_pixel() -> None:
    t = square(40.0, 30.0, 100.0)
    paste = warp_to_photo(t, np.full((64, 64, 3), 9.0, np.float32), None, PHOTO, DEFAULT)
    x, y, w, h = paste.region
    px, py = np.meshgrid(np.arange(x, x + w, dtype=np.float64), np.arange(y, y + h, dtype=np.float64))
    expected = crop_alpha((px - 40.0) / 100.0, (py - 30.0) / 100.0, DEFAULT)
    np.testing.assert_allclose(paste.alpha, expected, atol=1e-5)
    assert paste.alpha.dtype == np.float32 and paste.alpha.shape == (h, w)
    np.testing.assert_allclose(paste.content, 9.0, atol=1e-4)
    assert paste.reference is None


def test_the_config_is_honoured_and_defaults_when_absent() -> None:
    t = square(40.0, 30.0, 100.0)
    content = np.full((64, 64, 3), 9.0, np.float32)
    wide = BlendConfig(crop_margin=0.05, crop_feather=0.3)
    paste = warp_to_photo(t, content, None, PHOTO, wide)
    x, y, w, h = paste.region
    px, py = np.meshgrid(np.arange(x, x + w, dtype=np.float64), np.arange(y, y + h, dtype=np.float64))
    np.testing.assert_allclose(paste.alpha, crop_alpha((px - 40.0) / 100.0, (py - 30.0) / 100.0, wide), atol=1e-5)
    assert np.array_equal(
        warp_to_photo(t, content, None, PHOTO).alpha, warp_to_photo(t, content, None, PHOTO, DEFAULT).alpha
    )
    plain, _, photo = _paste()
    match_colours(plain, photo + 100.0, 100.0)  # default limit: 48
    np.testing.assert_allclose(plain.content - _paste()[1], 48.0, atol=1e-3)
    loose, before, photo = _paste()
    match_colours(loose, photo + 100.0, 100.0, BlendConfig(colour_limit=70.0))
    np.testing.assert_allclose(loose.content - before, 70.0, atol=1e-3)


def test_the_change_mask_of_another_size_is_sampled_in_place() -> None:
    """A 32² change mask that is 1 on the left half of the crop: the alpha keeps only the left half."""
    t = square(40.0, 30.0, 100.0)
    change = np.zeros((32, 32), np.float32)
    change[:, :16] = 1.0
    paste = warp_to_photo(t, np.zeros((128, 128, 3), np.float32), change, PHOTO, DEFAULT)
    full = warp_to_photo(t, np.zeros((128, 128, 3), np.float32), None, PHOTO, DEFAULT)
    x = paste.region[0]
    row = 50
    left, right = slice(20 - x + 40, 85 - x + 40 - 1 - 40), slice(95 - x, 135 - x)  # u < 0.45, u > 0.55
    np.testing.assert_allclose(paste.alpha[row, left], full.alpha[row, left], atol=1e-6)
    assert float(paste.alpha[row, right].max()) == 0.0
    edge = paste.alpha[row, 88 - x : 92 - x]  # u = 0.48 .. 0.52: the change's own linear edge
    assert (np.diff(edge) <= 1e-6).all() and edge[0] > edge[-1]


def test_a_minified_face_is_area_filtered_not_aliased() -> None:
    """A 512² one-pixel checkerboard pasted over a 40 px face: every photo pixel is its mean grey."""
    t = square(60.0, 50.0, 40.0)
    checker = ((np.indices((512, 512)).sum(axis=0) % 2) * 255.0).astype(np.float32)
    paste = warp_to_photo(t, np.dstack([checker] * 3), None, PHOTO, DEFAULT)
    inner = paste.content[8:-8, 8:-8]
    assert float(np.abs(inner - 127.5).max()) < 1.0


def test_a_smaller_reconstruction_is_sampled_in_place_pixel_exactly() -> None:
    """The 32² reconstruction beside a 64² edit: its own pixel centres, u·32 − 0.5, not the edit's."""
    t = square(40.0, 30.0, 100.0)
    ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None], (32, 32, 3)).copy()
    paste = warp_to_photo(t, np.zeros((64, 64, 3), np.float32), None, PHOTO, DEFAULT, recon=ramp)
    assert paste.reference.shape == paste.content.shape
    x = paste.region[0]
    px = np.arange(x, x + paste.region[2], dtype=np.float64)
    inner = slice(10, 95)
    np.testing.assert_allclose(paste.reference[50, inner, 1], ((px - 40.0) / 100.0 * 32 - 0.5)[inner], atol=0.05)
    down = warp_to_photo(t, np.zeros((64, 64, 3), np.float32), None, PHOTO, DEFAULT, recon=ramp.transpose(1, 0, 2))
    py = np.arange(paste.region[1], paste.region[1] + paste.region[3], dtype=np.float64)
    np.testing.assert_allclose(down.reference[inner, 50, 0], ((py - 30.0) / 100.0 * 32 - 0.5)[inner], atol=0.05)


@pytest.mark.parametrize(("x0", "y0"), [(-300.0, 30.0), (260.0, 30.0), (30.0, -300.0), (30.0, 260.0)])
def test_a_face_outside_the_photo_pastes_nothing(x0: float, y0: float) -> None:
    """Left, right, above or below it (overlapping the photo's columns or rows: one side of the box is empty)."""
    t = square(x0, y0, 30.0)
    assert warp_to_photo(t, np.zeros((64, 64, 3), np.float32), None, PHOTO, DEFAULT) is None


def test_a_face_over_the_photo_edge_is_clipped_to_it() -> None:
    t = square(-50.0, -20.0, 100.0)
    paste = warp_to_photo(t, np.zeros((64, 64, 3), np.float32), None, PHOTO, DEFAULT)
    assert paste.region == (0, 0, 53, 83)


# --- seam colour matching ------------------------------------------------------------------------


def _paste(offset_alpha: float = 1.0) -> tuple[FacePaste, np.ndarray, np.ndarray]:
    """A pasted face, its content before matching, and the photo that equals its reconstruction."""
    t = square(40.0, 30.0, 100.0)
    rng = np.random.default_rng(5)
    content = rng.uniform(60.0, 200.0, (64, 64, 3)).astype(np.float32)
    paste = warp_to_photo(t, content, None, PHOTO, DEFAULT, recon=content[::-1].copy())
    paste.alpha *= offset_alpha
    return paste, paste.content.copy(), paste.reference.copy()


def test_a_uniform_colour_error_is_matched_everywhere() -> None:
    """photo = reconstruction + (20, 0, −10): the correction is that offset, on the seam and inside."""
    paste, before, photo = _paste()
    photo += np.array([20.0, 0.0, -10.0], np.float32)
    match_colours(paste, photo, 100.0, DEFAULT)
    np.testing.assert_allclose(paste.content - before, np.broadcast_to([20.0, 0.0, -10.0], before.shape), atol=0.05)


def test_the_correction_is_limited() -> None:
    paste, before, photo = _paste()
    match_colours(paste, photo + 100.0, 100.0, DEFAULT)
    np.testing.assert_allclose(paste.content - before, DEFAULT.colour_limit, atol=1e-3)
    paste, before, photo = _paste()  # a limit of one level is a limit, not "no correction"
    match_colours(paste, photo + 100.0, 100.0, BlendConfig(colour_limit=1.0))
    np.testing.assert_allclose(paste.content - before, 1.0, atol=1e-3)


def test_the_correction_follows_the_photo_minus_the_reconstruction_not_the_edit() -> None:
    paste, before, photo = _paste()
    paste.content += 30.0  # the edit brightened the face; the photo matches the reconstruction
    match_colours(paste, photo, 100.0, DEFAULT)
    np.testing.assert_allclose(paste.content, before + 30.0, atol=1e-3)


@pytest.mark.parametrize("q", [100.0, 400.0])
def test_a_local_colour_error_is_matched_locally(q: float) -> None:
    """Left half of the photo +30 red: the correction follows it on the left seam, not on the right
    (the low-pass width is a fraction of the face, also when the face is large and matched on a grid)."""
    t = square(40.0, 30.0, q)
    content = np.random.default_rng(6).uniform(60.0, 200.0, (64, 64, 3)).astype(np.float32)
    paste = warp_to_photo(t, content, None, (int(q) + 100, int(q) + 80), DEFAULT, recon=content)
    before, photo = paste.content.copy(), paste.reference.copy()
    x0, y0 = paste.region[:2]
    photo[:, : int(40 + q / 2) - x0, 0] += 30.0  # the left half of the face
    match_colours(paste, photo, q, DEFAULT)
    corr = paste.content[..., 0] - before[..., 0]
    seam = int(30 + 0.05 * q) - y0  # the top seam, where the crop alpha is 1/2
    left, right = int(40 + 0.2 * q) - x0, int(40 + 0.8 * q) - x0  # 0.3 q (~3 low-pass widths) from the middle
    assert corr[seam, left] > 27.0 and corr[seam, right] < 3.0 and (corr >= -1e-3).all()
    # inside the face, where the seam weight is 0, the correction is the low-passed seam's, so it
    # differs between the halves (without the low-pass it would be the whole ring's mean everywhere)
    middle = int(30 + 0.5 * q) - y0
    inner_left, inner_right = int(40 + 0.15 * q) - x0, int(40 + 0.85 * q) - x0
    assert paste.alpha[middle, inner_left] > 0.999 and paste.alpha[middle, inner_right] > 0.999
    assert corr[middle, inner_left] > corr[middle, inner_right] + 10.0


@pytest.mark.parametrize("q", [100.0, 400.0])
def test_a_local_colour_error_is_matched_locally_in_y_too(q: float) -> None:
    """The same with the top half of the face +30 red: the low-pass has the same width in y as in x
    (a large face is matched on a grid whose cells must stay square)."""
    t = square(40.0, 30.0, q)
    content = np.random.default_rng(6).uniform(60.0, 200.0, (64, 64, 3)).astype(np.float32)
    paste = warp_to_photo(t, content, None, (int(q) + 100, int(q) + 80), DEFAULT, recon=content)
    before, photo = paste.content.copy(), paste.reference.copy()
    x0, y0 = paste.region[:2]
    photo[: int(30 + q / 2) - y0, :, 0] += 30.0  # the top half of the face
    match_colours(paste, photo, q, DEFAULT)
    corr = paste.content[..., 0] - before[..., 0]
    seam = int(40 + 0.05 * q) - x0  # the left seam
    top, bottom = int(30 + 0.2 * q) - y0, int(30 + 0.8 * q) - y0
    assert corr[top, seam] > 27.0 and corr[bottom, seam] < 3.0 and (corr >= -1e-3).all()
    middle = int(40 + 0.5 * q) - x0
    inner_top, inner_bottom = int(30 + 0.15 * q) - y0, int(30 + 0.85 * q) - y0
    assert paste.alpha[inner_top, middle] > 0.999 and paste.alpha[inner_bottom, middle] > 0.999
    assert corr[inner_top, middle] > corr[inner_bottom, middle] + 10.0


def test_a_small_seam_on_a_coarse_grid_is_matched_exactly() -> None:
    """A 20 px paste of a big face (grid step 10): its seam sums to less than one grid cell, and the
    uniform colour error must still be matched in full."""
    alpha = np.ones((20, 20), np.float32)
    alpha[:, 0] = alpha[:, -1] = alpha[0, :] = alpha[-1, :] = 0.5
    paste = FacePaste((0, 0, 20, 20), alpha, np.full((20, 20, 3), 90.0, np.float32))
    match_colours(paste, np.full((20, 20, 3), 130.0, np.float32), 960.0, DEFAULT)
    np.testing.assert_allclose(paste.content, 130.0, atol=0.05)


def test_only_the_seam_ring_decides_the_correction() -> None:
    """A difference where the alpha is 1 (inside the face, where the edit shows) is not a colour error."""
    paste, before, photo = _paste()
    inside = paste.alpha >= 0.999
    assert inside.mean() > 0.5
    photo[inside] += 30.0
    match_colours(paste, photo, 100.0, DEFAULT)
    assert float(np.abs(paste.content - before).max()) < 0.5


def test_a_paste_one_pixel_high_is_matched() -> None:
    """A big face cut by the photo's edge down to one row: the reduced grid keeps at least one cell."""
    paste = FacePaste((0, 0, 300, 1), np.full((1, 300), 0.5, np.float32), np.full((1, 300, 3), 90.0, np.float32))
    match_colours(paste, np.full((1, 300, 3), 100.0, np.float32), 960.0, DEFAULT)
    np.testing.assert_allclose(paste.content, 100.0, atol=1e-3)
    tall = FacePaste((0, 0, 1, 300), np.full((300, 1), 0.5, np.float32), np.full((300, 1, 3), 90.0, np.float32))
    match_colours(tall, np.full((300, 1, 3), 80.0, np.float32), 960.0, DEFAULT)
    np.testing.assert_allclose(tall.content, 80.0, atol=1e-3)


def test_without_a_seam_or_without_a_limit_nothing_changes() -> None:
    for alpha_scale, config in ((0.0, DEFAULT), (1.0, BlendConfig(colour_limit=0.0))):
        paste, before, photo = _paste(alpha_scale)
        match_colours(paste, photo + 20.0, 100.0, config)
        assert np.array_equal(paste.content, before)


def test_without_a_reconstruction_the_content_is_the_reference() -> None:
    paste, before, _ = _paste()
    paste.reference = None  # then the edit itself is compared with the photo
    match_colours(paste, before + 12.0, 100.0, DEFAULT)
    np.testing.assert_allclose(paste.content - before, 12.0, atol=0.05)


# --- the compositor ------------------------------------------------------------------------------


def _flat(region: tuple[int, int, int, int], colour: float, alpha: float) -> FacePaste:
    _, _, w, h = region
    return FacePaste(region, np.full((h, w), alpha, np.float32), np.full((h, w, 3), colour, np.float32))


def test_the_compositor_box_is_the_union_of_the_regions() -> None:
    comp = Compositor([(10, 20, 30, 40), (25, 5, 10, 10), (0, 0, 0, 5), (60, 90, 5, 0)])  # empty ones are ignored
    assert comp.box == (10, 5, 30, 55)
    assert comp.alpha.shape == (55, 30) and comp.premul.shape == (55, 30, 3)
    assert Compositor([]).box == (0, 0, 0, 0)


@pytest.mark.parametrize("region", [(3, 7, 5, 1), (3, 7, 1, 5), (3, 7, 1, 1)])
def test_a_region_one_pixel_thin_is_part_of_the_box(region: tuple[int, int, int, int]) -> None:
    """A face cut by the photo's edge down to one row or column still gets its place in the box."""
    comp = Compositor([region])
    assert comp.box == region
    comp.add(_flat(region, 90.0, 1.0))
    assert comp.alpha.shape == (region[3], region[2]) and np.all(comp.alpha == 1.0)
    np.testing.assert_allclose(comp.layer()[..., 0], 90.0, atol=1e-4)


def test_later_faces_are_pasted_over_earlier_ones() -> None:
    comp = Compositor([(0, 0, 4, 4), (2, 0, 4, 4)])
    comp.add(_flat((0, 0, 4, 4), 100.0, 1.0))
    comp.add(_flat((2, 0, 4, 4), 200.0, 0.5))
    layer = comp.layer()
    assert comp.box == (0, 0, 6, 4)
    np.testing.assert_allclose(comp.alpha[0], [1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(layer[0, :, 0], [100.0, 100.0, 150.0, 150.0, 200.0, 200.0], atol=1e-4)


def test_a_quarter_over_a_half_is_the_over_operator() -> None:
    comp = Compositor([(0, 0, 2, 2)])
    comp.add(_flat((0, 0, 2, 2), 40.0, 0.5))
    comp.add(_flat((0, 0, 2, 2), 200.0, 0.25))
    np.testing.assert_allclose(comp.alpha, 1.0 - 0.5 * 0.75)
    np.testing.assert_allclose(comp.layer()[..., 0], (40.0 * 0.5 * 0.75 + 200.0 * 0.25) / 0.625, atol=1e-4)


def test_a_weight_scales_the_alpha_and_a_window_slices_the_layer() -> None:
    comp = Compositor([(3, 4, 2, 2)])
    weight = np.array([[1.0, 0.0], [0.5, 0.25]], np.float32)
    comp.add(_flat((3, 4, 2, 2), 80.0, 0.8), weight)
    np.testing.assert_allclose(comp.alpha, [[0.8, 0.0], [0.4, 0.2]], atol=1e-6)
    assert comp.layer((slice(1, 2), slice(0, 2))).shape == (1, 2, 3)
    np.testing.assert_allclose(comp.layer((slice(1, 2), slice(0, 2)))[..., 2], 80.0, atol=1e-4)
    assert float(comp.layer()[0, 1, 0]) == 0.0  # no alpha: no content, not a division by zero


# --- helpers -------------------------------------------------------------------------------------


def test_the_documented_defaults() -> None:
    """The widths and limits docs/architecture.md and the field comments give (tuned on real photos)."""
    assert BlendConfig() == BlendConfig(
        crop_margin=0.01,
        crop_feather=0.08,
        change_low=6.0,
        change_high=16.0,
        change_smooth=1 / 256,
        change_dilate=0.03,
        change_feather=0.02,
        colour_sigma=0.08,
        colour_limit=48.0,
        oversample=2.0,
    )


def test_gaussian_and_prefilter() -> None:
    img = np.zeros((21, 21), np.float32)
    img[10, 10] = 1.0
    assert _gaussian(img, 0.3) is img  # too small to matter: untouched
    blurred = _gaussian(img, 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-4) and blurred[10, 10] < 0.05
    assert blurred[10, 10 + 3] > blurred[10, 10 + 6] > 0.0  # radius 3σ: 6 px still reached
    same = np.ones((8, 8, 3), np.float32)
    assert _prefilter(same, 8) is same
    blocks = np.kron(np.arange(4, dtype=np.float32).reshape(2, 2), np.ones((4, 4), np.float32))
    np.testing.assert_allclose(_prefilter(np.dstack([blocks] * 3), 2)[..., 0], [[0, 1], [2, 3]], atol=1e-5)
    assert _prefilter(np.ones((4, 4, 3), np.float32), 8).shape == (8, 8, 3)
