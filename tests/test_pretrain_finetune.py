"""The paper's COCO pre-training path on CPU: pre-train the demo model on synthetic COCO-panoptic images (133
classes, single-frame samples), then fine-tune on synthetic VSPW from that workdir with the 133-class classifiers
re-initialised and every other leaf loaded."""

import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))
import demo  # noqa: E402
import demo_coco_pretrain  # noqa: E402

from stcl_jax.export import restore_variables  # noqa: E402
from stcl_jax.training import loop  # noqa: E402
from stcl_jax.training.optim import path_str  # noqa: E402

CLASSIFIERS = {f"params/{h}/conv_seg/{leaf}" for h in ("decode_head", "auxiliary_head") for leaf in ("kernel", "bias")}


def _small(config, **over):
    with config.unlocked():
        config.total_steps, config.checkpoint_every_steps, config.eval.max_videos = 2, 2, 2
        for k, v in over.items():
            config[k] = v
    return config


@pytest.mark.slow
def test_coco_pretrain_then_vspw_finetune(tmp_path, caplog):
    pre_dir, ft_dir = str(tmp_path / "pre"), str(tmp_path / "ft")
    pre = loop.train_and_evaluate(_small(demo_coco_pretrain.get_config("runlocal")), pre_dir)
    assert pre["step"] == 2 and np.isfinite(pre["loss"]) and "val/miou" in pre
    with open(os.path.join(pre_dir, "config.json")) as f:
        assert json.load(f)["model"]["num_classes"] == 133

    caplog.set_level(logging.INFO, logger="stcl_jax.train")
    ft = loop.train_and_evaluate(_small(demo.get_config("runlocal"), init_from=pre_dir), ft_dir)
    assert ft["step"] == 2 and np.isfinite(ft["loss"])
    with open(os.path.join(ft_dir, "init_from_report.json")) as f:
        report = json.load(f)
    reset = {r.split(":")[0] for r in report["reset"]}
    assert reset == CLASSIFIERS
    assert report["missing"] == [] and report["mismatched"] == [] and report["unused"] == []
    pre_vars, _, _ = restore_variables(pre_dir)
    n_leaves = len(jax.tree_util.tree_leaves(pre_vars))
    assert len(report["loaded"]) == n_leaves - len(CLASSIFIERS)
    logged = [r.getMessage() for r in caplog.records if "re-initialised (reset)" in r.getMessage()]
    assert {m.split("(reset) ")[1].split(":")[0] for m in logged} == CLASSIFIERS
    assert any("(133,) in" in m and "vs (124,)" in m for m in logged)


def test_init_from_loads_everything_but_the_reset_classifiers(tmp_path):
    """merge at the value level: loaded leaves equal the file's, reset ones keep the fresh initialisation."""
    import optax

    from stcl_jax.models import build_segmenter
    from stcl_jax.models.io import save_variables
    from stcl_jax.training import mesh as mesh_lib
    from stcl_jax.training import state as state_lib

    cfg = demo.get_config("runlocal")
    model = build_segmenter(cfg.model)
    tx = optax.adamw(1e-3)
    mesh = mesh_lib.make_mesh()
    abstract, shardings = state_lib.abstract_state_and_shardings(model, tx, (1, 32, 32, 3), mesh, cfg.mesh)
    fresh = state_lib.create_train_state(model, tx, (1, 32, 32, 3), 0, shardings)
    pre_cfg = demo_coco_pretrain.get_config("runlocal").model
    pre_state = state_lib.create_train_state(build_segmenter(pre_cfg), tx, (1, 32, 32, 3), 1,
                                             state_lib.abstract_state_and_shardings(
                                                 build_segmenter(pre_cfg), tx, (1, 32, 32, 3), mesh, cfg.mesh)[1])
    export = str(tmp_path / "export")
    save_variables(export, {"params": jax.device_get(pre_state.params),
                            "batch_stats": jax.device_get(pre_state.batch_stats)}, pre_cfg)
    new = loop._init_from(export, fresh, tx, shardings, str(tmp_path), ("conv_seg",))
    for (path, got), want, init in zip(jax.tree_util.tree_leaves_with_path(new.params),
                                       jax.tree_util.tree_leaves(pre_state.params),
                                       jax.tree_util.tree_leaves(fresh.params)):
        expected = init if "conv_seg" in path_str(path) else want
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=path_str(path))
    with pytest.raises(ValueError, match="config.init_from_reset"):
        loop._init_from(export, fresh, tx, shardings, str(tmp_path), ())
