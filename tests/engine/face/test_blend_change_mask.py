"""The change mask's dead zone and thresholds (engine/face/blend.py `change_mask`, `BlendConfig`).

An edit never reproduces the reconstruction exactly: G(ŵ) drifts a little everywhere. Below
`change_low` that drift must not blend in at all (0 %, so the photo keeps its own pixels), from
`change_high` on a change is pasted fully, and in between the blend follows the difference. Checked as
properties of `change_mask` here; through the pipeline, with a fake engine whose edit drifts everywhere,
in tests/engine/test_pipeline_drift.py. (No torch here: this file is the fast first line of the mutation run.)
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ffclip.engine.face.blend import BlendConfig, change_mask

DEFAULT = BlendConfig()

sizes = st.sampled_from([16, 64, 256])
levels = st.floats(0.0, 40.0, allow_nan=False)


@st.composite
def thresholds(draw: st.DrawFn) -> BlendConfig:
    low = draw(st.floats(0.5, 20.0))
    return BlendConfig(change_low=low, change_high=low + draw(st.floats(0.5, 20.0)))


def _recon(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 255.0, (size, size, 3)).astype(np.float32)


def ramp(d: float, config: BlendConfig) -> float:
    return float(np.clip((d - config.change_low) / (config.change_high - config.change_low), 0.0, 1.0))


# --- change_mask as a function -------------------------------------------------------------------


def test_the_default_thresholds() -> None:
    """The documented levels: below 6 of 255 is unchanged, from 16 on fully changed."""
    assert (DEFAULT.change_low, DEFAULT.change_high) == (6.0, 16.0)


@given(size=sizes, d=levels, sign=st.sampled_from([-1.0, 1.0]), config=st.one_of(st.just(DEFAULT), thresholds()))
def test_a_uniform_difference_gives_the_ramp_everywhere(size: int, d: float, sign: float, config: BlendConfig) -> None:
    recon = _recon(size, 1)
    mask = change_mask(recon + sign * d, recon, config)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, ramp(d, config), atol=1e-4)


@given(
    size=sizes,
    seed=st.integers(0, 2**16),
    fraction=st.floats(0.0, 0.999),
    config=st.one_of(st.just(DEFAULT), thresholds()),
)
def test_drift_below_the_low_threshold_is_exactly_zero(
    size: int, seed: int, fraction: float, config: BlendConfig
) -> None:
    """Any pattern of per-channel differences whose mean stays under change_low: mask 0, not merely small."""
    rng = np.random.default_rng(seed)
    recon = _recon(size, seed)
    drift = rng.uniform(-1.0, 1.0, (size, size, 3)).astype(np.float32) * np.float32(fraction * config.change_low)
    mask = change_mask(recon + drift, recon, config)
    assert float(mask.max()) == 0.0


@given(size=sizes, d=st.floats(0.0, 100.0), config=st.one_of(st.just(DEFAULT), thresholds()))
def test_at_or_above_the_high_threshold_is_fully_changed(size: int, d: float, config: BlendConfig) -> None:
    recon = _recon(size, 2)
    mask = change_mask(recon + np.float32(config.change_high + d), recon, config)
    assert float(mask.min()) >= 1.0 - 1e-4 and float(mask.max()) <= 1.0  # float32 blur rounding


@given(seed=st.integers(0, 2**16), scale=st.floats(1.0, 4.0))
def test_a_larger_difference_never_gives_a_smaller_mask(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    recon = _recon(64, seed)
    diff = rng.normal(0.0, 8.0, (64, 64, 3)).astype(np.float32)
    smaller = change_mask(recon + diff, recon)
    larger = change_mask(recon + diff * np.float32(scale), recon)
    assert (larger >= smaller - 1e-5).all()
    assert ((smaller >= 0.0) & (smaller <= 1.0)).all()


def test_a_local_change_is_dilated_and_feathered_by_the_configured_widths() -> None:
    """A changed square: fully changed on it (and a dilation ring around it), 0 beyond the feather."""
    size = 256
    recon = _recon(size, 3)
    edit = recon.copy()
    edit[96:160, 96:160] += 40.0
    mask = change_mask(edit, recon)
    radius = round(DEFAULT.change_dilate * size)  # 8 px
    sigma = DEFAULT.change_feather * size  # ~5 px
    assert (mask[96:160, 96:160] >= 0.9).all()  # its corners are rounded by the dilation and the feather
    inner = 96 - radius + int(3 * sigma)  # inside the dilated square by three feather sigmas
    assert (mask[inner : 160 + radius - int(3 * sigma), inner : 160 + radius - int(3 * sigma)] >= 0.99).all()
    outer = 96 - radius - int(3 * sigma) - 2  # beyond the dilation and the feather's reach
    far = np.ones_like(mask, dtype=bool)
    far[outer : 160 + (96 - outer), outer : 160 + (96 - outer)] = False
    assert float(mask[far].max()) == 0.0
    edge = mask[128, 64:96]  # the feathered edge rises monotonically, through 1/2 at the dilated edge
    assert (np.diff(edge) >= -1e-6).all()
    assert abs(64 + int(np.argmax(edge >= 0.5)) - (96 - radius)) <= 1
    np.testing.assert_allclose(mask[64:96, 128], edge, atol=1e-6)  # the same in y: a round dilation


def test_thresholds_apply_to_the_mean_over_the_colour_channels() -> None:
    recon = _recon(32, 4)
    one_channel = recon.copy()
    one_channel[..., 0] += 3 * 11.0  # mean over RGB: 11 levels, halfway up the default ramp
    np.testing.assert_allclose(change_mask(one_channel, recon), 0.5, atol=1e-4)


def test_isolated_noisy_pixels_are_smoothed_below_the_threshold() -> None:
    """GAN noise: single pixels 12 levels off (above change_low on their own) are blurred (σ = 1 px at
    256²) below it before thresholding, so they do not blend in."""
    recon = _recon(256, 7)
    edit = recon.copy()
    rng = np.random.default_rng(7)
    ys, xs = rng.integers(8, 248, 40), rng.integers(8, 248, 40)
    edit[ys, xs] += 12.0
    assert float(change_mask(edit, recon).max()) == 0.0
    assert float(change_mask(edit, recon, BlendConfig(change_smooth=0.0)).max()) > 0.5  # unsmoothed, they would


def test_without_a_config_the_defaults_apply() -> None:
    recon = _recon(64, 8)
    np.testing.assert_array_equal(change_mask(recon + 11.0, recon), change_mask(recon + 11.0, recon, DEFAULT))


def test_the_feather_scales_with_the_crop_side() -> None:
    """The edge of a change is a Gaussian ramp of σ = change_feather × side: intermediate values over
    a few σ, the same width in crop fractions at every size (a feather in pixels would vanish at 1024²
    or be a hard step at 256²)."""
    widths = []
    for size in (128, 256):
        recon = _recon(size, 9)
        edit = recon.copy()
        edit[:, : size // 2] += 40.0  # the left half changed: a vertical edge
        mask = change_mask(edit, recon, BlendConfig(change_dilate=0.0))
        row = mask[size // 2]
        widths.append(int(((row > 0.05) & (row < 0.95)).sum()) / size)
        sigma = DEFAULT.change_feather * size
        assert abs(float(row[size // 2]) - 0.5) < 0.1  # half way at the edge
        assert float(row[size // 2 + int(round(sigma))]) < 0.25  # one σ out: Φ(-1) ≈ 0.16
    assert widths[0] > 0.04 and abs(widths[0] - widths[1]) < 0.02  # ~3.3 σ = 0.066 of the side


def test_a_one_pixel_dilation_is_applied() -> None:
    """A dilation radius that rounds to one pixel still dilates (a 3×3 round kernel)."""
    size = 64
    recon = _recon(size, 10)
    edit = recon.copy()
    edit[32, 32] += 60.0
    plain = BlendConfig(change_smooth=0.0, change_feather=0.0, change_dilate=0.0)
    one = BlendConfig(change_smooth=0.0, change_feather=0.0, change_dilate=1.0 / size)
    assert int(change_mask(edit, recon, plain).sum()) == 1
    dilated = change_mask(edit, recon, one)
    assert dilated[31:34, 31:34].sum() >= 5 and dilated[31:34, 31:34].sum() == dilated.sum()
    assert dilated[31, 32] == dilated[33, 32] == dilated[32, 31] == dilated[32, 33] == 1.0
