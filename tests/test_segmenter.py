"""Segmenter contract (docs/design.md): config, init, apply at any size, train mode, rng streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.models import build_segmenter, model_config


@pytest.fixture(scope="module")
def micro():
    cfg = model_config("micro", num_classes=5)
    model = build_segmenter(cfg)
    k = jax.random.key(0, impl="rbg")  # compiles ~2x faster than threefry on CPU; any key works
    images = jax.random.normal(jax.random.key(1), (2, 45, 71, 3))  # not a patch, window or 32 multiple
    variables = jax.jit(model.init)({"params": k, "dropout": k, "drop_path": k}, images)
    return cfg, model, variables, images


_EVAL = {}


def _eval_fn(model):
    """One jitted eval apply per model (eager apply is slow on CPU)."""
    if model not in _EVAL:
        _EVAL[model] = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return _EVAL[model]


def test_config_sizes_and_errors():
    for size, dim, heads in [("tiny", 96, 3), ("small", 96, 3), ("base", 128, 4), ("large", 192, 6)]:
        cfg = model_config(size)
        assert (cfg.swin.embed_dim, cfg.swin.num_heads[0], cfg.num_classes) == (dim, heads, 124)
        assert cfg.decoder.channels == 512 and cfg.aux.channels == 256 and cfg.projection.dim == 512
    assert model_config("large").swin.depths == (2, 2, 18, 2)
    cfg = model_config("t", window_size=12, projection_feature="stage3", **{"decoder.channels": 256})
    assert (cfg.swin.window_size, cfg.projection.stride, cfg.decoder.channels) == (12, 16, 256)
    with pytest.raises(ValueError, match="projection_dimm"):
        model_config("tiny", projection_dimm=3)
    with pytest.raises(ValueError, match="huge"):
        model_config("huge")
    with pytest.raises(AttributeError):  # locked: a typo'd field fails
        model_config("tiny").swin.windowsize = 3
    cfg = model_config("tiny")
    assert (cfg.projection.feature, cfg.projection.stride) == ("stage2", 8)  # the encoder, stride 8 by default
    cfg.projection.feature = "fused"  # stride left stale: build must refuse
    with pytest.raises(ValueError, match="projection.stride"):
        build_segmenter(cfg)


def test_apply_shapes_any_size(micro):
    cfg, model, variables, images = micro
    assert set(variables) == {"params", "batch_stats"}
    out = _eval_fn(model)(variables, images)
    assert out["logits"].shape == (2, 45, 71, 5) and out["logits"].dtype == jnp.float32
    assert out["aux_logits"].shape == (2, 45, 71, 5) and out["aux_logits"].dtype == jnp.float32
    s = cfg.projection.stride
    assert out["embeddings"].shape == (2, -(-45 // s), -(-71 // s), cfg.projection.dim)
    assert np.isfinite(np.asarray(out["logits"])).all()
    # Batch elements are independent in eval mode (same shapes: no recompilation).
    swapped = _eval_fn(model)(variables, images[::-1])["logits"]
    np.testing.assert_allclose(swapped[0], out["logits"][1], rtol=1e-4, atol=1e-5)


def test_outputs_are_in_the_compute_dtype(micro):
    """A bf16 model returns bf16 logits (upsampled in bf16, as under autocast) and keeps float32 parameters."""
    cfg, _, variables, images = micro
    model = build_segmenter(model_config("micro", num_classes=5, dtype="bfloat16"))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    assert {k: v.dtype for k, v in out.items()} == {k: jnp.bfloat16 for k in ("logits", "aux_logits", "embeddings")}
    assert out["logits"].shape == (2, 45, 71, 5)
    with pytest.raises(ValueError, match="remat_policy='some'"):
        model_config("micro", remat=True, remat_policy="some")


def test_train_mode_rngs_and_batch_stats(micro):
    _, model, variables, images = micro

    @jax.jit
    def fwd(v, x, k1, k2):
        return model.apply(v, x, train=True, rngs={"dropout": k1, "drop_path": k2}, mutable=["batch_stats"])

    k = jax.random.key
    out_a, upd = fwd(variables, images, k(1), k(2))
    out_b, _ = fwd(variables, images, k(1), k(2))
    out_c, _ = fwd(variables, images, k(1), k(3))  # only the drop_path stream differs
    np.testing.assert_array_equal(out_a["logits"], out_b["logits"])
    assert not np.allclose(out_a["logits"], out_c["logits"])  # stochastic depth is applied in training
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(upd["batch_stats"])
    assert len(old) == len(new) and all(not np.allclose(a, b) for a, b in zip(old, new))
    out_eval = _eval_fn(model)(variables, images)
    assert not np.allclose(out_eval["logits"], out_a["logits"])


def test_parameter_names_follow_checkpoints(micro):
    _, _, variables, _ = micro
    p = variables["params"]
    assert set(p) == {"backbone", "decode_head", "auxiliary_head", "projection_head"}
    block = p["backbone"]["layers_2"]["blocks_1"]
    assert set(block) == {"norm1", "attn", "norm2", "mlp"}
    assert set(block["attn"]) == {"qkv", "proj", "relative_position_bias_table"}
    assert block["attn"]["relative_position_bias_table"].shape == (13 * 13, 2)
    assert set(p["backbone"]["layers_0"]["downsample"]) == {"norm", "reduction"}
    assert "layers_3" in p["backbone"] and "downsample" not in p["backbone"]["layers_3"]
    assert {f"psp_modules_{i}" for i in range(4)} <= set(p["decode_head"])
    assert set(variables["batch_stats"]["decode_head"]["fpn_bottleneck"]["bn"]) == {"mean", "var"}


_SHARDED_BN = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from stcl_jax.models import build_segmenter, model_config

assert jax.device_count() == 8, jax.devices()
cfg = model_config("micro", num_classes=3, drop_path_rate=0.0, depths=(1, 1, 1, 1),
                   **{"decoder.dropout": 0.0, "aux.dropout": 0.0})
model = build_segmenter(cfg)
# Every device's slice has a different scale: per-device BatchNorm statistics could not match the global ones.
images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) * (1 + jnp.arange(8.0))[:, None, None, None]
variables = jax.jit(model.init)({"params": jax.random.key(1, impl="rbg")}, images)
step = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
mesh = Mesh(np.array(jax.devices()), ("data",))
sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
assert len(sharded.sharding.device_set) == 8
out_s, upd_s = step(variables, sharded)
out_u, upd_u = step(variables, jax.device_put(images, jax.devices()[0]))
for a, b in zip(jax.tree.leaves(upd_s), jax.tree.leaves(upd_u)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(out_s["logits"], out_u["logits"], rtol=1e-4, atol=1e-5)
print("SHARDED_BN_OK")
"""


def test_batchnorm_statistics_cover_the_global_sharded_batch():
    """jit over a batch sharded on 8 (fake CPU) devices updates batch_stats exactly as on the whole batch."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", _SHARDED_BN], env=env, capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0 and "SHARDED_BN_OK" in res.stdout, res.stderr[-3000:]


def test_attention_impl_is_validated():
    cfg = model_config("micro", window_size=4)
    assert cfg.attention_impl == "xla"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        model_config("micro", window_size=4, attention_impl="flash")
