"""The CNN recipe's SGD against torch.optim.SGD, and which leaves weight decay reaches under each rule."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stcl_jax.configs import base as common  # noqa: E402

from stcl_jax.training import optim  # noqa: E402


def swin_like_tree():
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {
        "backbone": {
            "patch_embed": {"proj": {"kernel": f(4, 4, 3, 8), "bias": f(8)}, "norm": {"scale": f(8), "bias": f(8)}},
            "absolute_pos_embed": f(1, 16, 8),
            "layers_0": {"blocks_0": {"norm1": {"scale": f(8), "bias": f(8)},
                                      "attn": {"relative_position_bias_table": f(49, 2),
                                               "qkv": {"kernel": f(8, 24), "bias": f(24)}}}},
            "norm0": {"scale": f(8), "bias": f(8)},
        },
        "decode_head": {"bottleneck": {"bn": {"scale": f(8), "bias": f(8)}},
                        "conv_seg": {"kernel": f(1, 1, 8, 5), "bias": f(5)}},
    }


def decayed(tree, cfg):
    mask = optim.decay_mask(tree, cfg.optim.no_decay_patterns, cfg.optim.decay_exempt)
    return sorted(optim.path_str(p) for p, v in jax.tree_util.tree_leaves_with_path(mask) if v)


def test_mmseg_rule_is_the_default():
    """mmseg's Swin paramwise_cfg: norms, relative-position tables and absolute_pos_embed exempt; biases and the
    heads' BN decay."""
    cfg = common.base_config()
    assert cfg.optim.decay_exempt == "mmseg"
    assert decayed(swin_like_tree(), cfg) == [
        "backbone/layers_0/blocks_0/attn/qkv/bias", "backbone/layers_0/blocks_0/attn/qkv/kernel",
        "backbone/patch_embed/proj/bias", "backbone/patch_embed/proj/kernel",
        "decode_head/bottleneck/bn/bias", "decode_head/bottleneck/bn/scale",
        "decode_head/conv_seg/bias", "decode_head/conv_seg/kernel"]


def test_norms_and_biases_rule():
    cfg = common.base_config()
    cfg.optim.decay_exempt = "norms_and_biases"
    assert decayed(swin_like_tree(), cfg) == ["backbone/layers_0/blocks_0/attn/qkv/kernel",
                                              "backbone/patch_embed/proj/kernel", "decode_head/conv_seg/kernel"]
    cfg.optim.decay_exempt = "none_of_these"
    with pytest.raises(ValueError, match="decay_exempt"):
        decayed(swin_like_tree(), cfg)
    cfg.optim.name = "adam"
    with pytest.raises(ValueError, match="optim.name='adam'"):
        optim.make_optimizer(cfg)


def test_sgd_matches_torch():
    """Five SGD updates (momentum 0.9, masked coupled weight decay, warmup + poly) against torch.optim.SGD."""
    cfg = common.base_config()
    cfg.optim.name, cfg.optim.learning_rate, cfg.optim.weight_decay = "sgd", 0.1, 0.3  # large: a wrong mask shows
    cfg.total_steps, cfg.optim.warmup_steps, cfg.optim.warmup_ratio = 10, 3, 0.1
    tx, sched = optim.make_optimizer(cfg)
    params = swin_like_tree()
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mask = jax.tree_util.tree_leaves(optim.decay_mask(params, cfg.optim.no_decay_patterns, cfg.optim.decay_exempt))
    assert 0 < sum(mask) < len(mask)
    tparams = [torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in leaves]
    topt = torch.optim.SGD([{"params": [p for p, m in zip(tparams, mask) if m], "weight_decay": 0.3},
                            {"params": [p for p, m in zip(tparams, mask) if not m], "weight_decay": 0.0}],
                           lr=0.1, momentum=0.9)
    state = tx.init(params)
    rng = np.random.default_rng(1)
    for step in range(5):
        grads = [rng.normal(size=x.shape).astype(np.float32) for x in leaves]
        updates, state = tx.update(jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in grads]),
                                   state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        for group in topt.param_groups:
            group["lr"] = float(sched(step))
        for p, g in zip(tparams, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    for got, want in zip(jax.tree_util.tree_leaves(params), tparams):
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)
