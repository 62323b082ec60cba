"""stcl_jax.data.augment: mmseg rules (resize, cat_max_ratio crop, photometric, normalise, pad) and clip
consistency, checked against hand-computed values and NumPy references."""

import numpy as np
import pytest

from stcl_jax.data import augment

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def test_rescale_size_matches_mmcv_rule():
    assert augment.rescale_size((480, 853), (480, 853)) == (480, 853)
    assert augment.rescale_size((480, 853), (960, 1706)) == (960, 1706)
    assert augment.rescale_size((480, 640), (240, 426)) == (240, 320)     # short edge limits: 240/480
    assert augment.rescale_size((100, 52), (480, 853)) == (853, 444)      # long edge limits: 853/100, 443.56 -> 444


class _ScriptedRng:
    """Returns scripted values from integers() so the crop retry rule can be checked draw by draw."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, lo, hi):
        v = self.values.pop(0)
        assert lo <= v < hi
        return v


def test_crop_cat_max_ratio_retries_like_mmseg():
    labels = np.zeros((1, 10, 100), np.uint8)
    labels[:, :, 50:] = 1                          # class 0 left half, class 1 right half
    labels[:, :, 0:5] = 255                        # ignored pixels do not count
    # (y0, x0) draws: x0=0 -> one class only; x0=45 -> 5 vs 15 columns = 0.75, not < 0.75; x0=42 -> 8/20 ok
    box = augment.crop_box(_ScriptedRng([0, 0, 0, 45, 0, 42, 0, 10]), labels, (10, 20), 0.75, 255)
    assert box == (0, 10, 42, 62)
    # never satisfied: the 11th draw is kept
    rng = _ScriptedRng([0, 0] * 11)
    assert augment.crop_box(rng, labels, (10, 20), 0.75, 255) == (0, 10, 0, 20) and rng.values == []
    # cat_max_ratio = 1 disables the rule: one draw
    rng = _ScriptedRng([0, 3, 9, 9])
    assert augment.crop_box(rng, labels, (10, 20), 1.0, 255) == (0, 10, 3, 23) and rng.values == [9, 9]
    # image smaller than the crop: the whole image
    assert augment.crop_box(np.random.default_rng(0), labels, (64, 128), 0.75, 255) == (0, 10, 0, 100)


def test_photometric_brightness_contrast_against_reference():
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    p = augment.PhotometricParams(brightness=20.7, contrast=1.3, contrast_first=True, saturation=None, hue=None)
    # mmseg's `convert` computes in float32 and truncates to uint8 after each step
    step1 = np.clip(img.astype(np.float32) + np.float32(20.7), 0, 255).astype(np.uint8)
    ref = np.clip(step1.astype(np.float32) * np.float32(1.3), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(augment.photometric(img, p), ref)
    same = augment.PhotometricParams(None, None, False, 1.0, 0)      # HSV round trips only
    assert np.abs(augment.photometric(img, same).astype(int) - img).max() <= 8
    grey = np.full((2, 2, 3), 100, np.uint8)                          # no saturation: hue/saturation change nothing
    np.testing.assert_array_equal(augment.photometric(grey, augment.PhotometricParams(None, None, 0, 1.5, 10)), grey)


def _kwargs(**over):
    kw = dict(base_size=(40, 60), scale_range=(0.5, 2.0), crop_size=(32, 32), cat_max_ratio=0.75, flip_prob=0.5,
              photometric_distortion=False, mean=MEAN, std=STD, ignore_index=255)
    kw.update(over)
    return kw


def test_identity_settings_give_exact_normalisation_and_padding():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    lab = rng.integers(0, 5, (2, 20, 30), dtype=np.uint8)
    out, olab = augment.augment_clip(rng, img, lab, **_kwargs(base_size=(20, 30), scale_range=(1, 1),
                                                               crop_size=(24, 40), cat_max_ratio=1.0, flip_prob=0))
    ref = (img.astype(np.float64) - np.array(MEAN)) / np.array(STD)
    assert out.dtype == np.float32 and olab.dtype == np.uint8 and out.shape == (2, 24, 40, 3)
    np.testing.assert_allclose(out[:, :20, :30], ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(olab[:, :20, :30], lab)
    assert (out[:, 20:] == 0).all() and (out[:, :, 30:] == 0).all()
    assert (olab[:, 20:] == 255).all() and (olab[:, :, 30:] == 255).all()


def _pattern_clip(t):
    """Blocks of 4 classes; the image colour is a function of the class; frame k is brighter by 10 * k."""
    y, x = np.mgrid[0:40, 0:60]
    lab = ((y // 10 + x // 15) % 4).astype(np.uint8)
    colours = np.array([[20, 60, 100], [200, 40, 60], [60, 180, 30], [90, 90, 200]], np.uint8)
    img = np.stack([colours[lab] + 10 * k for k in range(t)]).astype(np.uint8)
    return img, np.stack([lab] * t), colours


@pytest.mark.parametrize("seed", range(6))
def test_clip_frames_get_the_same_geometry(seed):
    img, lab, colours = _pattern_clip(3)
    out, olab = augment.augment_clip(np.random.default_rng(seed), img, lab, **_kwargs())
    assert (olab == olab[0]).all()                                   # labels identical across the clip
    valid = olab[0] != 255
    assert valid.any()
    pixels = out * np.array(STD, np.float32) + np.array(MEAN, np.float32)
    for k in range(3):                                               # frame k = frame 0 + 10 * k everywhere
        np.testing.assert_allclose(pixels[k][valid], pixels[0][valid] + 10 * k, atol=1.01)
    # image and label stayed aligned: away from block borders the colour is the label's colour
    lb = olab[0]
    inner = valid.copy()
    for dy, dx in [(-1, 0), (1, 0), (0, -1), (0, 1)]:
        inner &= np.roll(lb, (dy, dx), (0, 1)) == lb
    inner[[0, -1]] = inner[:, [0, -1]] = False
    np.testing.assert_allclose(pixels[0][inner], colours[lb[inner]], atol=1.01)


def test_photometric_identical_for_identical_frames():
    img, lab, _ = _pattern_clip(1)
    img, lab = np.repeat(img, 3, 0), np.repeat(lab, 3, 0)
    for seed in range(4):
        out, _ = augment.augment_clip(np.random.default_rng(seed), img, lab, **_kwargs(photometric_distortion=True))
        assert (out == out[0]).all()


def test_mismatched_clip_is_rejected():
    with pytest.raises(ValueError, match="do not match"):
        augment.augment_clip(np.random.default_rng(0), np.zeros((2, 4, 4, 3), np.uint8), np.zeros((2, 4, 5), np.uint8),
                             **_kwargs())


@pytest.mark.parametrize("seed", range(4))
def test_uint8_output_normalised_on_device_equals_host_normalisation(seed):
    """augment_clip_uint8 + inputs.normalize_padded == augment_clip: same geometry and draws, same values,
    zeros in the padding (scale ratios below 1 make the clip smaller than the crop)."""
    import jax.numpy as jnp

    from stcl_jax.training.inputs import normalize_padded

    img, lab, _ = _pattern_clip(2)
    kw = _kwargs(scale_range=(0.4, 1.2), photometric_distortion=True)
    ref, ref_lab = augment.augment_clip(np.random.default_rng(seed), img, lab, **kw)
    raw, raw_lab, hw = augment.augment_clip_uint8(np.random.default_rng(seed), img, lab, **kw)
    assert raw.dtype == np.uint8 and raw.shape == ref.shape and hw.dtype == np.int32
    np.testing.assert_array_equal(raw_lab, ref_lab)
    assert (raw[:, hw[0]:] == 0).all() and (raw[:, :, hw[1]:] == 0).all()
    out = normalize_padded(jnp.asarray(raw)[None], jnp.asarray(hw)[None], MEAN, STD)[0]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=2e-6)
