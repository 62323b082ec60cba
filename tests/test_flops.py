"""bench/flops.py: analytic matmul/conv FLOPs from the jaxpr, checked by hand and against XLA's cost analysis."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import flops  # noqa: E402


def test_dense_layer_is_2mnk():
    m, k, n = 8, 24, 40
    layer = nn.Dense(n)
    x = jnp.ones((m, k))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    count = flops.count_flops(layer.apply, params, x)
    assert count.total == 2 * m * n * k
    assert dict(count.by_primitive) == {"dot_general": 2 * m * n * k}


def test_batched_einsum_counts_batch_dims():
    b, h, q, k, d = 3, 2, 5, 7, 4
    count = flops.count_flops(lambda a, c: jnp.einsum("bhqd,bhkd->bhqk", a, c),
                              jax.ShapeDtypeStruct((b, h, q, d), jnp.float32),
                              jax.ShapeDtypeStruct((b, h, k, d), jnp.float32))
    assert count.total == 2 * b * h * q * k * d


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_layer_by_hand(groups):
    n, hw, cin, cout, kh, kw, stride = 2, 9, 8, 12, 3, 2, 2
    layer = nn.Conv(cout, (kh, kw), strides=stride, padding="VALID", feature_group_count=groups)
    x = jnp.ones((n, hw, hw, cin))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    oh, ow = (hw - kh) // stride + 1, (hw - kw) // stride + 1
    expected = 2 * n * oh * ow * cout * (cin // groups) * kh * kw
    assert flops.count_flops(layer.apply, params, x).by_primitive["conv_general_dilated"] == expected


def test_conv_padding_taps_are_not_counted():
    """A 3x3 SAME conv on a 4x4 map: each dimension has 4 x 3 - 2 real (position, tap) pairs (the two edge
    taps fall on padding)."""
    layer = nn.Conv(5, (3, 3), padding="SAME", use_bias=False)
    x = jnp.ones((1, 4, 4, 2))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert flops.count_flops(layer.apply, params, x).total == 2 * 5 * 2 * (4 * 3 - 2) ** 2


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_gradient_is_three_convs(stride):
    """Forward, input gradient and kernel gradient each do the forward's multiply-adds, also for a strided conv
    (whose input gradient is a conv with lhs dilation: its holes are not counted)."""
    layer = nn.Conv(6, (3, 3), strides=stride, padding="VALID", use_bias=False)
    x = jnp.ones((2, 9, 9, 5))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    fwd = flops.count_flops(layer.apply, params, x).total
    both = flops.count_flops(jax.grad(lambda p, x: layer.apply(p, x).sum(), argnums=(0, 1)), params, x).total
    assert both == 3 * fwd


def test_scan_of_k_matmuls_is_k_times_one():
    k, n = 6, 16
    w = jax.ShapeDtypeStruct((k, n, n), jnp.float32)
    x = jax.ShapeDtypeStruct((4, n), jnp.float32)
    one = flops.count_flops(lambda w, x: x @ w[0], w, x).total

    def scanned(w, x):
        return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]

    assert flops.count_flops(scanned, w, x).total == k * one
    # the gradient: forward + two products per step in the backward scan
    grad = flops.count_flops(jax.grad(lambda w, x: scanned(w, x).sum()), w, x).total
    assert grad == 3 * k * one


def test_fori_loop_static_trip_count_and_nesting():
    n = 8
    x = jax.ShapeDtypeStruct((n, n), jnp.float32)
    one = 2 * n ** 3

    def loops(x):
        inner = jax.jit(lambda y: jax.lax.fori_loop(0, 3, lambda i, z: z @ z, y))   # a call around a loop
        return jax.lax.fori_loop(2, 7, lambda i, z: inner(z), x)                     # 5 x 3 products

    count = flops.count_flops(loops, x)
    assert count.total == 15 * one and count.unknown_trip_loops == 0


def test_while_with_dynamic_trip_count_is_flagged():
    x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    count = flops.count_flops(lambda x, n: jax.lax.fori_loop(0, n, lambda i, z: z @ z, x), x,
                              jax.ShapeDtypeStruct((), jnp.int32))
    assert count.unknown_trip_loops == 1 and count.total == 2 * 4 ** 3


def test_cond_counts_the_expensive_branch():
    x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
    count = flops.count_flops(lambda p, x: jax.lax.cond(p, lambda z: z @ z @ z, lambda z: z @ z, x),
                              jax.ShapeDtypeStruct((), jnp.bool_), x)
    assert count.total == 2 * 2 * 4 ** 3


def test_remat_and_custom_vjp_are_entered():
    n = 8
    x = jax.ShapeDtypeStruct((n, n), jnp.float32)

    @jax.custom_vjp
    def square(z):
        return z @ z

    square.defvjp(lambda z: (z @ z, z), lambda z, g: (g @ z.T + z.T @ g,))
    assert flops.count_flops(jax.checkpoint(lambda z: z @ z), x).total == 2 * n ** 3
    assert flops.count_flops(square, x).total == 2 * n ** 3
    assert flops.count_flops(jax.grad(lambda z: square(z).sum()), x).total == 3 * 2 * n ** 3


class _ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2)(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


def test_agrees_with_xla_cost_analysis_without_loops():  # the one test here that compiles
    """On a loop-free net, XLA's count (which also counts elementwise work) is within a few % of ours."""
    model = _ConvNet()
    x = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)

    def step(p, x):
        return jax.grad(lambda p: jnp.mean(model.apply(p, x) ** 2))(p)

    ours = flops.count_flops(step, params, x).total
    cost = jax.jit(step).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert ours == pytest.approx(float(cost["flops"]), rel=0.05)


def test_source_tag_splits_by_file_also_in_the_backward():
    """The Dense layer's products (flax/linen/linear.py), forward and both gradient products, carry its tag; the
    product written here does not."""
    layer = nn.Dense(6, use_bias=False)
    x = jnp.ones((4, 5))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)

    def loss(p, x, w):
        return jnp.sum(layer.apply(p, x) @ w)

    tag = flops.source_tag({"dense": r"flax/linen/linear\.py"})
    count = flops.count_flops(jax.grad(loss, argnums=(0, 1)), params, x, jnp.ones((6, 3)), tag=tag)
    assert count.by_tag["dense"] == 3 * 2 * 4 * 5 * 6
    assert count.by_tag["other"] == 2 * 2 * 4 * 6 * 3        # forward + the gradient w.r.t. the Dense output
    assert count.total == count.by_tag["dense"] + count.by_tag["other"]


def test_pallas_kernels_count_once_per_grid_point():
    """The STCL Pallas kernels (forward with gradients + dz_contrast) at a shape no back end pads: exactly
    `stcl_flops("pallas")` with every positive-pass tile visited (the count cannot see which tiles are skipped)."""
    from stcl_jax.losses import spatial_temporal_consistency_loss as stcl, stcl_flops

    b, t, h, w, d = 1, 4, 8, 16, 128  # M = 128 anchors, N = 512 contrast pixels: whole tiles on every back end
    feats = jax.ShapeDtypeStruct((b, t, h, w, d), jnp.float32)
    labels = jax.ShapeDtypeStruct((b, t, h, w), jnp.int32)
    count = flops.count_flops(jax.value_and_grad(lambda f, y: stcl(f, y, implementation="pallas")), feats, labels)
    assert count.total == stcl_flops("pallas", b, h * w, t * h * w, d, positive_fraction=1.0)
