"""Swin building blocks against brute-force references; drop path, bf16 compute, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.models.swin import (DropPath, SwinStage, SwinTransformer, WindowAttention, drop_path_rates,
                                  relative_position_index, shift_attention_mask, softmax_low_precision,
                                  window_partition, window_region_ids, window_reverse)
from stcl_jax.models.upernet import adaptive_avg_pool, resize_bilinear


@pytest.mark.parametrize("window", [2, 3, 7])
def test_relative_position_index_brute_force(window):
    idx = relative_position_index(window)
    tokens = [(r, c) for r in range(window) for c in range(window)]
    for i, (r1, c1) in enumerate(tokens):
        for j, (r2, c2) in enumerate(tokens):
            assert idx[i, j] == (r1 - r2 + window - 1) * (2 * window - 1) + (c1 - c2 + window - 1)


@pytest.mark.parametrize("hw,window,shift", [((6, 9), 3, 1), ((14, 7), 7, 3), ((4, 4), 4, 2)])
def test_shift_mask_blocks_exactly_the_wrapped_pairs(hw, window, shift):
    """After rolling by -shift, two tokens of a window may attend iff neither axis wraps between them."""
    h, w = hw
    ids = window_region_ids(h, w, window, shift)
    assert ids.shape == ((h // window) * (w // window), window * window) and ids.dtype == np.int8
    mask = np.asarray(shift_attention_mask(ids))
    assert mask.shape == ((h // window) * (w // window), window * window, window * window)
    k = 0
    for wr in range(0, h, window):
        for wc in range(0, w, window):
            toks = [(r, c) for r in range(wr, wr + window) for c in range(wc, wc + window)]
            for i, (r1, c1) in enumerate(toks):
                for j, (r2, c2) in enumerate(toks):
                    same = ((r1 >= h - shift) == (r2 >= h - shift)) and ((c1 >= w - shift) == (c2 >= w - shift))
                    assert mask[k, i, j] == (0.0 if same else -100.0)
            k += 1


def _attention_reference(params, x, region_ids, heads):
    """float64 NumPy window attention: softmax(q k^T / sqrt(d) + bias [+ shift mask]) v, then proj."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    b, nw, n, c = x.shape
    d = c // heads
    qkv = (np.asarray(x, np.float64) @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(b, nw, n, 3, heads, d)
    q, k, v = (qkv[..., i, :, :].transpose(0, 1, 3, 2, 4) for i in range(3))    # (b, nw, heads, n, d)
    window = int(round(n**0.5))
    bias = p["relative_position_bias_table"][relative_position_index(window)].transpose(2, 0, 1)
    logits = q @ k.transpose(0, 1, 2, 4, 3) / np.sqrt(d) + bias
    if region_ids is not None:
        logits = logits + np.where(region_ids[:, :, None] != region_ids[:, None, :], -100.0, 0.0)[None, :, None]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 1, 3, 2, 4).reshape(b, nw, n, c)
    return out @ p["proj"]["kernel"] + p["proj"]["bias"]


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_float64_reference(shifted):
    """Regular windows (jax.nn.dot_product_attention) and shifted ones (einsums + region mask), float32."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 9, 8))
    ids = window_region_ids(6, 6, 3, 1) if shifted else None
    attn = WindowAttention(8, 2, 3)
    params = attn.init(jax.random.key(1), x, ids)["params"]
    params["relative_position_bias_table"] = jax.random.normal(jax.random.key(2), (25, 2))  # non-trivial bias
    out = jax.jit(lambda p, a: attn.apply({"params": p}, a, ids))(params, x)
    np.testing.assert_allclose(out, _attention_reference(params, x, ids, 2), rtol=1e-4, atol=1e-5)


def test_bf16_attention_saves_only_bf16_probabilities():
    """softmax_low_precision: float32 statistics, bf16 probabilities as the only (N, N) residual of a shifted
    block; its gradient is the float32 softmax gradient taken at those probabilities."""
    logits = jax.random.normal(jax.random.key(0), (3, 7, 7)) * 4
    cot = jax.random.normal(jax.random.key(1), (3, 7, 7)).astype(jnp.bfloat16)
    probs, vjp = jax.vjp(lambda a: softmax_low_precision(a, jnp.bfloat16), logits)
    ref = jax.nn.softmax(logits, axis=-1)
    assert probs.dtype == jnp.bfloat16
    np.testing.assert_array_equal(probs, ref.astype(jnp.bfloat16))
    p, g = np.asarray(probs, np.float64), np.asarray(cot, np.float64)
    np.testing.assert_allclose(vjp(cot)[0], p * (g - (g * p).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    _, ref_vjp = jax.vjp(lambda a: jax.nn.softmax(a, axis=-1), logits)
    np.testing.assert_allclose(vjp(cot)[0], ref_vjp(cot.astype(jnp.float32))[0], rtol=2e-2, atol=5e-3)

    x = jnp.zeros((2, 4, 9, 8), jnp.bfloat16)
    ids = window_region_ids(6, 6, 3, 1)
    attn = WindowAttention(8, 2, 3, dtype=jnp.bfloat16)
    params = jax.eval_shape(lambda: attn.init(jax.random.key(0), x, ids))["params"]
    loss = lambda prm, a: attn.apply({"params": prm}, a, ids).astype(jnp.float32).sum()  # noqa: E731
    residuals = jax.tree.leaves(jax.eval_shape(lambda prm, a: jax.vjp(loss, prm, a)[1], params, x))
    assert [r.dtype for r in residuals if r.shape[-2:] == (9, 9)] == [jnp.bfloat16]


def test_window_partition_round_trip():
    x = jnp.arange(2 * 6 * 9 * 4, dtype=jnp.float32).reshape(2, 6, 9, 4)
    win = window_partition(x, 3)
    assert win.shape == (2, 6, 9, 4)
    np.testing.assert_array_equal(win[0, 1, :, 0], np.asarray(x[0, 0:3, 3:6, 0]).reshape(-1))
    np.testing.assert_array_equal(window_reverse(win, 3, 6, 9), x)


def test_drop_path_schedule_and_scaling():
    rates = drop_path_rates((2, 2, 6, 2), 0.3)
    flat = [r for stage in rates for r in stage]
    np.testing.assert_allclose(flat, np.linspace(0, 0.3, 12))
    x = jnp.ones((4000, 1, 1, 2))
    y = DropPath(0.25).apply({}, x, False, rngs={"drop_path": jax.random.key(0)})
    kept = np.asarray(y[:, 0, 0, 0]) != 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    assert (np.asarray(y)[kept, 0, 0, 0] == np.asarray(y)[kept, 0, 0, 1]).all()  # whole sample dropped
    np.testing.assert_array_equal(DropPath(0.25).apply({}, x, True), x)


def test_adaptive_pool_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.RandomState(0).randn(2, 5, 7, 3).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    for scale in (1, 2, 3, 6):  # 6 > 5: bins overlap, as in a PPM on a small map
        ref = torch.nn.functional.adaptive_avg_pool2d(t, scale).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), scale), ref, rtol=1e-5, atol=1e-6)


# (input, output) sizes: x2 / x4 / x8 (the top-down path, logits), PPM maps onto small odd feature maps (up and
# down, no antialias), odd ratios (slices with per-phase weights), long periods (gathers), 1-pixel maps, identity.
RESIZES = [((5, 7), (10, 14)), ((6, 6), (24, 24)), ((3, 2), (24, 16)), ((6, 6), (2, 3)), ((6, 6), (5, 7)),
           ((3, 3), (2, 5)), ((2, 2), (5, 3)), ((1, 1), (4, 5)), ((5, 7), (11, 13)), ((12, 9), (23, 45)),
           ((4, 50), (9, 853)), ((5, 7), (3, 4)), ((5, 7), (5, 7))]


def _torch_resize(x, size, cotangent):
    torch = pytest.importorskip("torch")
    t = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
    out.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2)))
    return out.detach().numpy().transpose(0, 2, 3, 1), t.grad.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("in_size,size", RESIZES)
def test_resize_matches_torch_values_and_gradients(in_size, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *in_size, 3)).astype(np.float32)
    cot = rng.normal(size=(2, *size, 3)).astype(np.float32)
    ref, ref_grad = _torch_resize(x, size, cot)
    out, vjp = jax.vjp(lambda a: resize_bilinear(a, size), jnp.asarray(x))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vjp(jnp.asarray(cot))[0], ref_grad, rtol=1e-5, atol=1e-5)


def test_resize_has_no_matmul_and_stays_bf16():
    """No dot_general (jax.image.resize is a dense HIGHEST-precision matmul), no scatter in the x4 gradient, and
    bf16 in -> bf16 out, float32 arithmetic rounded once: torch's float32 result on the same bf16 values rounded."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 5, 4)), jnp.bfloat16)
    for size in ((24, 20), (4, 3), (11, 13), (9, 853)):
        text = jax.jit(jax.grad(lambda a: resize_bilinear(a, size).astype(jnp.float32).sum())).lower(x).as_text()
        assert "dot_general" not in text, size
    assert "scatter" not in jax.jit(jax.grad(lambda a: resize_bilinear(a, (24, 20)).sum())).lower(
        x.astype(jnp.float32)).as_text()
    for size in ((24, 20), (4, 3), (11, 13)):
        out = resize_bilinear(x, size)
        assert out.dtype == jnp.bfloat16
        ref, _ = _torch_resize(np.asarray(x, np.float32), size, np.zeros((1, *size, 4), np.float32))
        # one rounding: within half a bf16 ulp (<= 2**-8 relative) of the float32 result
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2**-8, atol=1e-6)


def test_bf16_compute_keeps_fp32_params():
    x = jax.random.normal(jax.random.key(0), (1, 9, 10, 8))
    kw = dict(depth=2, num_heads=2, window=3, drop_path=(0.0, 0.1), downsample=True)
    fp32, bf16 = SwinStage(**kw), SwinStage(**kw, dtype=jnp.bfloat16)
    variables = jax.jit(fp32.init)(jax.random.key(1, impl="rbg"), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(1), x)))
    ref = jax.jit(fp32.apply)(variables, x)
    out = jax.jit(bf16.apply)(variables, x.astype(jnp.bfloat16))  # the backbone feeds bf16 patches
    for a, b in zip(out, ref):
        assert a.dtype == jnp.bfloat16
        err = np.linalg.norm(np.asarray(a, np.float32) - b) / np.linalg.norm(b)
        assert err < 3e-2, err


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_same_values_and_gradients(policy):
    """Rematerialised blocks (config `remat`, `remat_policy`) recompute in the backward pass: same numbers."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 8))
    kw = dict(depth=2, num_heads=2, window=3, drop_path=(0.0, 0.5), downsample=True)
    plain, remat = SwinStage(**kw), SwinStage(**kw, remat=True, remat_policy=policy)
    params = jax.jit(plain.init)(jax.random.key(1, impl="rbg"), x)["params"]

    def loss(module, p):
        y, merged = module.apply({"params": p}, x, False, rngs={"drop_path": jax.random.key(2)})
        return jnp.mean(y**2) + jnp.mean(merged**3)

    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def test_remat_policies_save_less_than_no_remat():
    """Residuals kept for the backward (the vjp closure's arrays): "full" < "dots" (+ matmul outputs) < none."""
    import math

    x = jnp.zeros((2, 9, 10, 8))
    kw = dict(depth=2, num_heads=2, window=3, drop_path=(0.0, 0.0), downsample=True)
    params = jax.eval_shape(SwinStage(**kw).init, jax.random.key(1), x)["params"]

    def saved(**remat):
        f = lambda p: SwinStage(**kw, **remat).apply({"params": p}, x)[1].sum()  # noqa: E731
        residuals = jax.tree.leaves(jax.eval_shape(lambda p: jax.vjp(f, p)[1], params))
        return sum(math.prod(r.shape) for r in residuals)

    assert saved(remat=True, remat_policy="full") < saved(remat=True, remat_policy="dots") < saved()
