"""Optimizer: mmseg schedule, weight-decay mask, and AdamW steps against torch.optim.AdamW."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stcl_jax.configs import base as common  # noqa: E402

from stcl_jax.training import optim  # noqa: E402


def mmcv_lr(it, *, base_lr, max_iters, warmup_iters, warmup_ratio, power, min_lr):
    """mmcv PolyLrUpdaterHook.get_lr + LrUpdaterHook.get_warmup_lr('linear'), transcribed in plain Python."""
    regular = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr
    if warmup_iters and it < warmup_iters:
        k = (1 - it / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular


@pytest.mark.parametrize("power,min_lr", [(1.0, 0.0), (0.9, 1e-6)])
def test_schedule_matches_mmcv(power, min_lr):
    kw = dict(base_lr=7e-5, max_iters=20_000, warmup_iters=1_500, warmup_ratio=1e-6, power=power, min_lr=min_lr)
    sched = optim.poly_warmup_schedule(learning_rate=7e-5, total_steps=20_000, warmup_steps=1_500,
                                       warmup_ratio=1e-6, power=power, min_lr=min_lr)
    steps = [0, 1, 2, 750, 1499, 1500, 1501, 10_000, 19_999, 20_000]
    got = np.array([float(sched(s)) for s in steps])
    want = np.array([mmcv_lr(s, **kw) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    assert got[0] == pytest.approx(7e-5 * 1e-6, rel=1e-4)     # warmup starts near zero
    assert got[5] < 7e-5 and got[4] < got[5]                  # peak just after the warmup


def test_schedule_rejects_bad_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.poly_warmup_schedule(learning_rate=1.0, total_steps=10, warmup_steps=11, warmup_ratio=0.0)


def _tree():
    r = np.random.default_rng(0)
    f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {
        "backbone": {
            "patch_embed": {"proj": {"kernel": f(4, 4, 3, 8), "bias": f(8)}, "norm": {"scale": f(8), "bias": f(8)}},
            "absolute_pos_embed": f(1, 16, 8),
            "layers_0": {"blocks_0": {"attn": {"relative_position_bias_table": f(49, 2),
                                               "qkv": {"kernel": f(8, 24), "bias": f(24)}}}},
        },
        "decode_head": {"bn": {"scale": f(8), "bias": f(8)}, "conv_seg": {"kernel": f(1, 1, 8, 5)}},
    }


def test_decay_mask():
    mask = optim.decay_mask(_tree(), common.base_config().optim.no_decay_patterns)
    flat = {optim.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == ["backbone/layers_0/blocks_0/attn/qkv/kernel", "backbone/patch_embed/proj/kernel",
                       "decode_head/conv_seg/kernel"]


def test_adamw_matches_torch():
    """Five updates with the masked decay and the schedule against torch.optim.AdamW with two param groups."""
    cfg = common.base_config()
    cfg.total_steps = 10
    cfg.optim.warmup_steps = 3
    cfg.optim.learning_rate = 1e-2
    cfg.optim.weight_decay = 0.5      # large, so that a wrong mask shows
    tx, sched = optim.make_optimizer(cfg)
    params = _tree()
    mask = optim.decay_mask(params, cfg.optim.no_decay_patterns, cfg.optim.decay_exempt)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mask_leaves = jax.tree_util.tree_leaves(mask)
    tparams = [torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in leaves]
    topt = torch.optim.AdamW(
        [{"params": [p for p, m in zip(tparams, mask_leaves) if m], "weight_decay": 0.5},
         {"params": [p for p, m in zip(tparams, mask_leaves) if not m], "weight_decay": 0.0}],
        lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    state = tx.init(params)
    rng = np.random.default_rng(1)
    for step in range(5):
        grads = [rng.normal(size=x.shape).astype(np.float32) for x in leaves]
        updates, state = tx.update(jax.tree_util.tree_unflatten(treedef, [jnp.asarray(g) for g in grads]),
                                   state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        lr = mmcv_lr(step, base_lr=1e-2, max_iters=10, warmup_iters=3, warmup_ratio=1e-6, power=1.0, min_lr=0.0)
        for group in topt.param_groups:
            group["lr"] = lr
        for p, g in zip(tparams, grads):
            p.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
    for got, want in zip(jax.tree_util.tree_leaves(params), tparams):
        np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)
