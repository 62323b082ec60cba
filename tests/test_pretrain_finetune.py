"""The paper's COCO pre-training path on CPU: pre-train the demo model on synthetic COCO-panoptic images (133
classes, single-frame samples), then fine-tune on synthetic VSPW from that workdir with the 133-class classifiers
re-initialised and every other leaf loaded."""

import json
import logging
import os

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from stcl_jax.config_files import load_config_module  # noqa: E402
demo = load_config_module(os.path.join(REPO, "configs", "demo.py"))
demo_coco_pretrain = load_config_module(os.path.join(REPO, "configs", "demo_coco_pretrain.py"))

from stcl_jax.workdir import restore_variables  # noqa: E402
from stcl_jax.training import loop  # noqa: E402

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
    ft_config = _small(demo.get_config("runlocal"), init_from=pre_dir)
    with ft_config.unlocked():
        ft_config.eval.at_end = False                 # the fine-tune's scores are not what this test checks
    ft = loop.train_and_evaluate(ft_config, ft_dir)
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

    # the evaluate CLI scores the pre-trained model over COCO's 133 classes, as the training loop did
    from stcl_jax import evaluate

    coco = os.path.join(pre_dir, "data", "built")
    out = str(tmp_path / "eval.json")
    assert evaluate.main(["--checkpoint", pre_dir, "--data", coco, "--mode", "whole", "--max-videos", "2",
                          "--json", out]) == 0
    with open(out) as f:
        scores = json.load(f)
    assert len(scores["class_names"]) == 133 and scores["miou"] == pytest.approx(pre["val/miou"], abs=1e-9)
    with pytest.raises(SystemExit):       # the 124-class model on the 133-class build: a clear CLI error
        evaluate.main(["--checkpoint", ft_dir, "--data", coco, "--mode", "whole", "--max-videos", "1"])


def test_init_from_loads_everything_but_the_reset_classifiers(tmp_path):
    """At the value level: loaded leaves equal the file's, reset ones keep their fresh values; without a reset
    pattern the classifier's shape difference is an error naming config.init_from_reset."""
    import jax.numpy as jnp
    import optax

    from stcl_jax.models import model_config
    from stcl_jax.models.io import save_variables
    from stcl_jax.training import mesh as mesh_lib
    from stcl_jax.training import state as state_lib

    rng = np.random.default_rng(0)
    params = {"backbone": {"w": jnp.zeros((2, 3))},
              "decode_head": {"conv_seg": {"kernel": jnp.zeros((1, 1, 4, 124)), "bias": jnp.zeros(124)}}}
    tx = optax.adamw(1e-3)
    fresh = state_lib.TrainState(step=jnp.int32(0), params=params, batch_stats={"bn": {"mean": jnp.zeros(4)}},
                                 opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
    shardings = mesh_lib.state_shardings(jax.eval_shape(lambda: fresh), mesh_lib.make_mesh())
    pre = {"params": {"backbone": {"w": rng.normal(size=(2, 3)).astype(np.float32)},
                      "decode_head": {"conv_seg": {"kernel": rng.normal(size=(1, 1, 4, 133)).astype(np.float32),
                                                   "bias": rng.normal(size=133).astype(np.float32)}}},
           "batch_stats": {"bn": {"mean": rng.normal(size=4).astype(np.float32)}}}
    export = str(tmp_path / "export")
    save_variables(export, pre, model_config("micro"))
    new = loop._init_from(export, fresh, optax.adamw(1e-3), shardings, str(tmp_path), ("conv_seg",))
    np.testing.assert_array_equal(new.params["backbone"]["w"], pre["params"]["backbone"]["w"])
    np.testing.assert_array_equal(new.batch_stats["bn"]["mean"], pre["batch_stats"]["bn"]["mean"])
    np.testing.assert_array_equal(new.params["decode_head"]["conv_seg"]["kernel"], np.zeros((1, 1, 4, 124)))
    with open(tmp_path / "init_from_report.json") as f:
        assert {r.split(":")[0] for r in json.load(f)["reset"]} == {
            "params/decode_head/conv_seg/kernel", "params/decode_head/conv_seg/bias"}
    with pytest.raises(ValueError, match="config.init_from_reset"):
        loop._init_from(export, fresh, tx, shardings, str(tmp_path), ())
