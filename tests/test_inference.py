"""Inference: sliding window vs whole image, multi-scale + flip vs a torch-resize reference, ensembles, recompiles."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stcl_jax.evaluation import inference

C = 5


def tiny_variables(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": jnp.asarray(rng.normal(size=(3, 3, 3, 8)), jnp.float32) * 0.5,
            "w2": jnp.asarray(rng.normal(size=(3, 3, 8, C)), jnp.float32) * 0.5}


def conv_apply(variables, images):
    """Two 3x3 convolutions (zero padding): context-dependent, so sliding windows differ from whole-image."""
    dn = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(images, variables["w1"], (1, 1), "SAME", dimension_numbers=dn)
    x = jnp.tanh(x)
    return jax.lax.conv_general_dilated(x, variables["w2"], (1, 1), "SAME", dimension_numbers=dn)


def pointwise_apply(variables, images):
    """Per-pixel model: commutes with flips."""
    return jnp.einsum("bhwc,ck->bhwk", jnp.tanh(images), variables["w2"][1, 1, :3])


def test_window_grid_matches_mmseg_480p():
    assert inference.window_grid((480, 853), (768, 768), (512, 512)) == [(0, 0), (0, 85)]
    assert inference.window_grid((840, 1493), (768, 768), (512, 512)) == [
        (0, 0), (0, 512), (0, 725), (72, 0), (72, 512), (72, 725)]
    assert inference.window_grid((30, 40), (64, 64), (48, 48)) == [(0, 0)]


def ref_slide(apply_fn, variables, img, crop, stride):
    """mmseg slide_inference, written as its loops, with NumPy accumulation."""
    b, h, w, _ = img.shape
    ch, cw = crop
    sh, sw = stride
    preds, count = None, np.zeros((h, w))
    for i in range(max(h - ch + sh - 1, 0) // sh + 1):
        for j in range(max(w - cw + sw - 1, 0) // sw + 1):
            y1, x1 = i * sh, j * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out = np.asarray(apply_fn(variables, img[:, y1:y2, x1:x2]), np.float64)
            preds = np.zeros((b, h, w, out.shape[-1])) if preds is None else preds
            preds[:, y1:y2, x1:x2] += out
            count[y1:y2, x1:x2] += 1
    return preds / count[None, :, :, None]


def test_slide_equals_whole_when_one_window_covers_the_image():
    v = tiny_variables()
    img = jnp.asarray(np.random.default_rng(0).normal(size=(2, 20, 28, 3)), jnp.float32)
    whole = inference.whole_logits(conv_apply, v, img)
    for crop in [(20, 28), (64, 64), (20, 100)]:
        slide = inference.slide_logits(conv_apply, v, img, crop, (16, 16))
        np.testing.assert_array_equal(np.asarray(slide), np.asarray(whole))


@pytest.mark.parametrize("crop,stride,window_batch", [((16, 16), (10, 12), 4), ((24, 12), (24, 5), 3)])
def test_slide_matches_mmseg_loop(crop, stride, window_batch):
    v = tiny_variables(1)
    img = jnp.asarray(np.random.default_rng(1).normal(size=(2, 30, 37, 3)), jnp.float32)
    got = inference.slide_logits(conv_apply, v, img, crop, stride, window_batch=window_batch)
    want = ref_slide(conv_apply, v, img, crop, stride)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    whole = np.asarray(inference.whole_logits(conv_apply, v, img))
    assert np.abs(want - whole).max() > 1e-3  # the windows really see less context than the whole image


def ref_tta_probs(apply_fn, variables, img, scales, flip, mode, crop, stride):
    """aug_test with torch F.interpolate (bilinear, align_corners=False) as the independent resize."""
    import torch  # here, not at the top: the 8-device subprocess imports this module and needs no torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(img)).permute(0, 3, 1, 2).double()
    h, w = x.shape[2:]
    total = 0.0
    views = [False, True] if flip else [False]
    for r in scales:
        size = (int(h * r + 0.5), int(w * r + 0.5))
        xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for fl in views:
            xi = xs.flip(3) if fl else xs
            xi = jnp.asarray(xi.permute(0, 2, 3, 1).float().numpy())
            if mode == "slide":
                logits = ref_slide(apply_fn, variables, xi, crop, stride)
            else:
                logits = np.asarray(apply_fn(variables, xi), np.float64)
            lt = torch.from_numpy(logits).permute(0, 3, 1, 2)
            lt = lt.flip(3) if fl else lt
            lt = F.interpolate(lt, size=(h, w), mode="bilinear", align_corners=False)
            total = total + torch.softmax(lt, dim=1)
    return (total / (len(scales) * len(views))).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_multiscale_flip_matches_reference(mode):
    v = tiny_variables(2)
    img = jnp.asarray(np.random.default_rng(2).normal(size=(1, 24, 34, 3)), jnp.float32)
    kw = dict(mode=mode, crop=(20, 20), stride=(14, 14), scales=(0.5, 1.0, 1.75), flip=True)
    got = jax.jit(functools.partial(inference.predict_probs, conv_apply, **kw))(v, img)
    want = ref_tta_probs(jax.jit(conv_apply), v, img, kw["scales"], True, mode, kw["crop"], kw["stride"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
    logits = jax.jit(functools.partial(inference.predict_logits, conv_apply, **kw))(v, img)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits, axis=-1)), want, rtol=1e-4, atol=1e-6)


def test_flip_tta_on_flip_symmetric_input():
    v = tiny_variables(3)
    half = np.random.default_rng(3).normal(size=(1, 16, 12, 3))
    img = jnp.asarray(np.concatenate([half, half[:, :, ::-1]], axis=2), jnp.float32)  # mirror-symmetric
    kw = dict(mode="slide", crop=(16, 16), stride=(8, 8))
    flipped = np.asarray(jax.jit(functools.partial(inference.predict_probs, conv_apply, flip=True, **kw))(v, img))
    single = jax.jit(lambda v, x: jax.nn.softmax(inference.slide_logits(conv_apply, v, x, (16, 16), (8, 8)), -1))
    single = np.asarray(single(v, img))
    # The image equals its mirror, so the flipped view is the mirror of the plain one and TTA averages the two.
    np.testing.assert_allclose(flipped, (single + single[:, :, ::-1]) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flipped, flipped[:, :, ::-1], rtol=1e-5, atol=1e-7)
    # A per-pixel model commutes with flips: flip TTA changes nothing, on any input.
    rnd = jnp.asarray(np.random.default_rng(4).normal(size=(2, 10, 13, 3)), jnp.float32)
    a = jax.jit(functools.partial(inference.predict_probs, pointwise_apply, mode="whole", flip=True))(v, rnd)
    b = jax.jit(functools.partial(inference.predict_probs, pointwise_apply, mode="whole", flip=False))(v, rnd)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_ensemble_of_one_equals_the_model_and_two_average():
    v1, v2 = tiny_variables(4), tiny_variables(5)
    img = jnp.asarray(np.random.default_rng(5).normal(size=(1, 18, 22, 3)), jnp.float32)
    kw = dict(mode="slide", crop=(12, 12), stride=(8, 8), scales=(1.0, 1.5), flip=True)
    probs = jax.jit(functools.partial(inference.predict_probs, conv_apply, **kw))
    p1, p2 = probs(v1, img), probs(v2, img)
    ensemble = jax.jit(lambda vs, x: inference.ensemble_probs([(conv_apply, v) for v in vs], x, **kw))
    np.testing.assert_array_equal(np.asarray(ensemble([v1], img)), np.asarray(p1))
    both = ensemble([v1, v2], img)
    np.testing.assert_allclose(np.asarray(both), (np.asarray(p1) + np.asarray(p2)) / 2, rtol=1e-6, atol=1e-7)


def test_predictor_no_recompilation_and_labels():
    traces = []

    def counting_apply(variables, images):
        traces.append(images.shape)
        return conv_apply(variables, images)

    v = tiny_variables(6)
    pred = inference.Predictor([(counting_apply, v)], mode="slide", crop=(16, 16), stride=(12, 12),
                               scales=(0.75, 1.0), flip=True, batch_size=2)
    rng = np.random.default_rng(6)
    frames = rng.integers(0, 256, size=(5, 20, 26, 3), dtype=np.uint8)
    labels = pred(frames)
    compiled = len(traces)
    assert compiled == 2  # one trace of the model per scale, for the whole video
    for _ in range(3):  # more frames, and a batch of a different length, of the same size: no retrace
        pred(rng.integers(0, 256, size=(3, 20, 26, 3), dtype=np.uint8))
    assert len(traces) == compiled
    images = inference.normalize(frames)
    probs = functools.partial(inference.predict_probs, conv_apply, mode="slide", crop=(16, 16), stride=(12, 12),
                              scales=(0.75, 1.0), flip=True)
    want = np.argmax(np.asarray(jax.jit(probs)(v, images)), -1)
    assert labels.dtype == np.uint8 and labels.shape == (5, 20, 26)
    np.testing.assert_array_equal(labels, want)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        pred(frames[..., 0])


def test_predictor_postprocess_gets_mean_probabilities():
    v = tiny_variables(8)
    frames = np.random.default_rng(8).integers(0, 256, size=(3, 14, 18, 3), dtype=np.uint8)
    post = lambda p: (jnp.max(p, -1), jnp.argmax(p, -1).astype(jnp.uint8))  # noqa: E731
    top, labels = inference.Predictor([(conv_apply, v)], mode="whole", batch_size=2, postprocess=post)(frames)
    probs = np.asarray(jax.nn.softmax(conv_apply(v, inference.normalize(frames)), -1))
    # eager reference vs the jitted predictor: XLA may contract the normalisation's x * inv_std - shift into an
    # FMA, which moves the inputs by an ulp (measured: 1.3e-6 relative in the probabilities)
    np.testing.assert_allclose(top, probs.max(-1), rtol=1e-5)
    np.testing.assert_array_equal(labels, probs.argmax(-1))


_SHARDED = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    import tests.test_inference as t
    from stcl_jax.evaluation import inference
    assert jax.local_device_count() == 8
    v = t.tiny_variables(7)
    frames = np.random.default_rng(7).integers(0, 256, size=(11, 18, 24, 3), dtype=np.uint8)
    kw = dict(mode="slide", crop=(16, 16), stride=(10, 10), flip=True)
    predictor = inference.Predictor([(t.conv_apply, v)], batch_size=8, **kw)
    many = predictor(frames)
    hlo = predictor._run.lower(predictor._variables, jax.device_put(frames[:8], predictor._data)).compile().as_text()
    assert not any(op in hlo for op in ("all-gather", "all-reduce", "all_gather", "all_reduce")), "cross-device traffic"
    one = inference.Predictor([(t.conv_apply, v)], devices=jax.local_devices()[:1], **kw)(frames)
    np.testing.assert_array_equal(many, one)
    print("OK")
""")


def test_predictor_data_parallel_over_8_devices():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300,
                         cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
