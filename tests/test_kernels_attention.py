"""The Pallas window-attention kernels (interpret mode on the CPU) against the XLA einsum path of swin.py, and
their Triton / Mosaic lowering (python -m stcl_jax.kernels --lower)."""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.kernels import __main__ as kernels_cli
from stcl_jax.kernels.window_attention import window_attention
from stcl_jax.kernels.window_attention_kernels import make_layout
from stcl_jax.models import model_config
from stcl_jax.models.swin import (SwinTransformer, WindowAttention, einsum_attention, relative_position_index,
                                  resolve_attention_impl, window_region_ids)


def _inputs(key, shape, dtype=jnp.float32):
    b, nw, n, h, d = shape
    ks = jax.random.split(key, 5)
    q, k, v, dout = (jax.random.normal(kk, shape).astype(dtype) for kk in (ks[0], ks[1], ks[2], ks[4]))
    return q * d**-0.5, k, v, 2 * jax.random.normal(ks[3], (h, n, n)), dout


def _assert_close(got, want, tol):
    """Elementwise |got - want| <= tol * max|want| (relative to the array's scale: gradients cross zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= tol, f"max error {err:.2e} of the scale > {tol:.0e}"


def _xla_value_and_grads(ids, q, k, v, bias, dout):
    """The "xla" path (swin.einsum_attention): output and (dq, dk, dv, dbias) for the cotangent dout."""
    out, vjp = jax.vjp(lambda *a: einsum_attention(*a, ids), q, k, v, bias)
    return out, vjp(dout)


def _numpy_reference(q, k, v, bias, region_ids):
    """float64 softmax(q k^T + bias [+ -100 across regions]) v."""
    q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
    logits = np.einsum("bwqhd,bwkhd->bwhqk", q, k) + bias
    if region_ids is not None:
        logits = logits + np.where(region_ids[:, :, None] != region_ids[:, None, :], -100.0, 0.0)[None, :, None]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bwhqk,bwkhd->bwqhd", p / p.sum(-1, keepdims=True), v)


# (window, windows per row x rows, shifted, variant, windows per program (fwd, bwd)): odd window counts; the
# GPU kernel body (16-row query tiles, id compare) and the TPU one (one tile, one-hot mask matmul) both run in
# interpret mode (the TPU body without a mask is the same code minus the mask).
CASES = [(7, (5, 1), True, "gpu", (2, 2)),      # 5 windows in groups of 2: one padded window
         (12, (3, 1), False, "gpu", (None, None)),
         (12, (1, 3), True, "tpu", (2, 3))]


@pytest.mark.parametrize("window,grid,shifted,variant,groups", CASES)
def test_kernel_matches_xla_path_float32(window, grid, shifted, variant, groups):
    cols, rows = grid
    shape = (2, cols * rows, window * window, 2, 8)
    ids = window_region_ids(rows * window, cols * window, window, window // 2) if shifted else None
    q, k, v, bias, dout = _inputs(jax.random.key(window), shape)

    def kernel(*a):
        return window_attention(*a, ids, backend="interpret", variant=variant, groups=groups)

    out, vjp = jax.jit(lambda *a: jax.vjp(kernel, *a))(q, k, v, bias)
    ref, ref_grads = jax.jit(functools.partial(_xla_value_and_grads, ids))(q, k, v, bias, dout)
    _assert_close(out, ref, 1e-5)
    _assert_close(out, _numpy_reference(q, k, v, bias, ids), 1e-5)
    for name, got, want in zip(("dq", "dk", "dv", "dbias"), jax.jit(vjp)(dout), ref_grads):
        assert got.dtype == want.dtype, name
        _assert_close(got, want, 1e-5)


@pytest.mark.parametrize("heads,head_dim,shifted", [(2, 16, True), (4, 32, True), (4, 32, False)])
def test_kernel_matches_xla_path_at_the_demo_small_stages(heads, head_dim, shifted):
    """configs/demo.py:runlocal at a 32x48 crop: stages 3-4 (2x3 / 1x2 tokens) are one 4x4 window of mostly
    padded tokens (nW=1, N=16), shifted by 2 in stage 3's second block; 2 frames per clip."""
    shape = (2, 1, 16, heads, head_dim)
    ids = window_region_ids(4, 4, 4, 2) if shifted else None
    q, k, v, bias, dout = _inputs(jax.random.key(heads), shape)
    out, vjp = jax.jit(lambda *a: jax.vjp(lambda *b: window_attention(*b, ids, backend="interpret"), *a))(
        q, k, v, bias)
    ref, ref_grads = jax.jit(functools.partial(_xla_value_and_grads, ids))(q, k, v, bias, dout)
    _assert_close(out, ref, 1e-5)
    for got, want in zip(jax.jit(vjp)(dout), ref_grads):
        _assert_close(got, want, 1e-5)


def test_kernel_bfloat16_no_worse_than_xla_bf16_path():
    """bf16 q, k, v: the kernel's output and gradients are within 2x (+ 1e-3 of the scale) of the XLA bf16 path's
    own error against float32 attention on the same bf16 inputs, and both within 3% of the scale."""
    window, shape = 12, (1, 3, 144, 2, 16)
    ids = window_region_ids(window, 3 * window, window, window // 2)
    q, k, v, bias, dout = _inputs(jax.random.key(3), shape, jnp.bfloat16)
    kernel = jax.jit(lambda *a: jax.vjp(lambda *b: window_attention(*b, ids, backend="interpret"), *a))
    out, vjp = kernel(q, k, v, bias)
    xla = jax.jit(functools.partial(_xla_value_and_grads, ids))
    xla_out, xla_grads = xla(q, k, v, bias, dout)
    f32 = [a.astype(jnp.float32) for a in (q, k, v, dout)]
    ref_out, ref_grads = xla(*f32[:3], bias, f32[3])
    got = [out, *jax.jit(vjp)(dout)]
    xla = [xla_out, *xla_grads]
    ref = [ref_out, *ref_grads]
    assert [g.dtype for g in got] == [x.dtype for x in xla] == [jnp.bfloat16] * 4 + [jnp.float32]
    for name, g, x, r in zip(("out", "dq", "dk", "dv", "dbias"), got, xla, ref):
        r = np.asarray(r, np.float64)
        scale = np.max(np.abs(r))
        err_kernel = np.max(np.abs(np.asarray(g, np.float64) - r)) / scale
        err_xla = np.max(np.abs(np.asarray(x, np.float64) - r)) / scale
        assert err_kernel <= 2 * err_xla + 1e-3 and err_kernel < 3e-2, (name, err_kernel, err_xla)


def test_custom_vjp_saves_no_score_sized_residual():
    shape = (2, 3, 49, 2, 8)
    ids = window_region_ids(7, 21, 7, 3)
    args = [jax.ShapeDtypeStruct(shape, jnp.bfloat16)] * 3 + [jax.ShapeDtypeStruct((2, 49, 49), jnp.float32)]
    residuals = jax.tree.leaves(jax.eval_shape(
        lambda *a: jax.vjp(lambda *b: window_attention(*b, ids, backend="interpret"), *a)[1], *args))
    assert sorted(r.shape for r in residuals) == sorted([shape] * 3 + [(2, 49, 49)])   # q, k, v and the bias


def test_flax_window_attention_param_grads_match():
    """WindowAttention(attention_impl="pallas") vs "xla": output, input and parameter gradients (the bias table's
    through the relative-position gather), shifted windows, float32."""
    window, x = 4, jax.random.normal(jax.random.key(0), (2, 4, 16, 8))
    ids = window_region_ids(8, 8, window, 2)
    modules = {impl: WindowAttention(8, 2, window, attention_impl=impl) for impl in ("xla", "pallas")}
    params = jax.jit(lambda key: modules["xla"].init(key, x, ids))(jax.random.key(1))["params"]
    params["relative_position_bias_table"] = jax.random.normal(jax.random.key(2), (49, 2))

    def value_and_grads(impl):
        loss = lambda p, a: jnp.sum(modules[impl].apply({"params": p}, a, ids) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

    (want, want_grads), (got, got_grads) = value_and_grads("xla"), value_and_grads("pallas")
    _assert_close(got, want, 1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        _assert_close(g, w, 1e-5)
    assert np.abs(got_grads[0]["relative_position_bias_table"]).min() > 0   # every table entry is used (w=4)


def test_swin_micro_pallas_equals_xla():
    """A one-stage Swin (a regular and a shifted block, 2 heads, window 4, the 6x6 map padded to 8x8): output and
    every parameter gradient of attention_impl="pallas" (with remat, policy "dots") equal "xla" in float32."""
    images = jax.random.normal(jax.random.key(0), (1, 24, 24, 3))
    models = {impl: SwinTransformer(16, (2,), (2,), window_size=4, attention_impl=impl, remat=impl == "pallas",
                                    remat_policy="dots") for impl in ("xla", "pallas")}
    params = jax.jit(models["xla"].init)(jax.random.key(1), images)["params"]

    def run(impl):
        def loss(p):
            outs = models[impl].apply({"params": p}, images)
            return sum(jnp.sum(o * o) for o in outs), outs
        return jax.jit(jax.grad(loss, has_aux=True))(params)[::-1]

    (want_outs, want_grads), (got_outs, got_grads) = run("xla"), run("pallas")
    for g, w in zip(got_outs, want_outs):
        _assert_close(g, w, 1e-5)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
        _assert_close(g, w, 1e-4)


_SHARDED = """
import functools
import math
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from stcl_jax.kernels.window_attention import window_attention
from stcl_jax.models.swin import window_region_ids

ids = window_region_ids(7, 21, 7, 3)
q, k, v, ct = (jax.random.normal(jax.random.key(i), (4, 3, 49, 2, 8)) for i in range(4))
bias = jax.random.normal(jax.random.key(4), (2, 49, 49))
loss = lambda q, k, v, bias: jnp.sum(window_attention(q, k, v, bias, ids) * ct)
grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
mesh = Mesh(np.array(jax.devices()), ("data",))
data, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
compiled = jax.jit(grad, in_shardings=(data, data, data, whole)).lower(q, k, v, bias).compile()
got, want = compiled(q, k, v, bias), jax.jit(grad)(q, k, v, bias)
err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
          for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
hlo = compiled.as_text()
print("ERR", err, "SPECS", [tuple(x.sharding.spec) for x in jax.tree.leaves(got)[1:4]])
bias_all_reduce = any("all-reduce(" in line and "f32[2,49,49]" in line for line in hlo.splitlines())
print("GATHERS", hlo.count("all-gather("), "BIAS_ALL_REDUCE", bias_all_reduce)
"""


def test_sharded_batch_runs_per_device_and_all_reduces_the_bias_gradient():
    """2 CPU devices, batch split: same values and gradients as one device, dq/dk/dv stay split, no all-gather,
    and the bias gradient is an all-reduce (sharding.batch_partitioned)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ERR"))
    assert float(line.split()[1]) < 1e-5, line
    assert "SPECS [('data',), ('data',), ('data',)]" in line, line
    assert "GATHERS 0 BIAS_ALL_REDUCE True" in proc.stdout, proc.stdout


def test_lowering_cli_small_finds_triton_and_mosaic_calls(capsys):
    assert kernels_cli.main(["--lower", "cuda", "tpu", "--small"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [[c.strip() for c in line.split("|")] for line in lines]
    for name, _, platform, calls, status in rows:
        assert status == "ok", (name, platform, status)
        assert calls == {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}[platform], (name, calls)
    attention = [r for r in rows if r[0].startswith("window_attention.")]
    assert len(attention) == 16                              # 2 stages x regular/shifted x fwd/bwd x 2 platforms
    assert {r[0].split()[0] for r in attention} == {"window_attention.fwd", "window_attention.bwd"}
    assert sorted((r[0], r[2]) for r in rows if r not in attention) == [  # every module of KERNEL_MODULES
        ("stcl_contrast_small", "cuda"), ("stcl_contrast_small", "tpu")]


def test_layout_padding_and_errors():
    gpu, tpu = make_layout((8, 256, 144, 6, 32), "gpu", backward=True), make_layout((8, 256, 144, 6, 32), "tpu",
                                                                                     backward=False)
    assert (gpu.rows, gpu.cols, gpu.depth, gpu.tile_q) == (144, 256, 32, 16)
    assert gpu.group == 16 and math.prod(gpu.grid) == 768                # default: ~512+ backward programs
    assert (tpu.rows, tpu.cols, tpu.tile_q, tpu.group, tpu.depth) == (256, 256, 256, 8, 32)
    small = make_layout((1, 5, 49, 3, 12), "gpu", backward=False, group=2)
    assert (small.rows, small.cols, small.depth, small.windows_padded) == (64, 64, 16, 6)
    with pytest.raises(ValueError, match="tile_q=24"):
        make_layout((1, 1, 144, 1, 32), "gpu", backward=False, tile_q=24)
    with pytest.raises(ValueError, match=r"bias shape \(2, 9, 9\)"):
        window_attention(*[jnp.zeros((1, 1, 16, 1, 8))] * 3, jnp.zeros((2, 9, 9)), backend="interpret")
    with pytest.raises(ValueError, match="backend='cuda'"):
        window_attention(*[jnp.zeros((1, 1, 16, 1, 8))] * 3, jnp.zeros((1, 16, 16)), backend="cuda")


def test_attention_impl_values():
    assert model_config("micro", attention_impl="pallas").attention_impl == "pallas"
    assert resolve_attention_impl("auto") == "xla" and resolve_attention_impl("pallas") == "pallas"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        model_config("micro", attention_impl="flash")
    with pytest.raises(ValueError, match="model.attention_impl='flash'"):
        resolve_attention_impl("flash")
    assert relative_position_index(4).max() == 48                       # the table the Flax test fills
