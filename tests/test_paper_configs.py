"""configs/paper.py (one variant per recipe of tables 1-4), the CNN configs, and two training steps of a CNN."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from stcl_jax.config_files import load_config_module  # noqa: E402
paper = load_config_module(os.path.join(REPO, "configs", "paper.py"))
resnest101 = load_config_module(os.path.join(REPO, "configs", "resnest101.py"))
resnet50 = load_config_module(os.path.join(REPO, "configs", "resnet50.py"))

TABLE_3 = {"table3_stcl_512_t007": (512, 0.07), "table3_stcl_512_t005": (512, 0.05),
           "table3_stcl_256_t007": (256, 0.07)}


@pytest.mark.parametrize("name", list(paper.VARIANTS))
def test_variant_builds_and_locks(name):
    c = paper.get_config(name)
    with pytest.raises(AttributeError):
        c.loss.stcl_wieght = 0.0
    small = paper.get_config(f"{name},runlocal")
    assert small.model.size == "micro" and small.model.backbone == c.model.backbone and small.total_steps <= 10
    assert small.loss.stcl_weight == c.loss.stcl_weight
    if name.startswith(("table1", "table2")) or name == "table3_baseline":  # baselines: no STCL yet
        assert c.loss.stcl_weight == 0.0
    else:
        assert c.loss.stcl_weight == 0.2
    if name in TABLE_3:
        assert (c.model.projection.dim, c.loss.temperature) == TABLE_3[name]
    assert (c.data.pseudo_ratio > 0) == (name == "table4_pseudo")
    assert c.total_steps == (80_000 if name == "table2_coco_pretrain" else 20_000) and c.global_batch_size == 16


def test_recipes_per_table():
    assert list(paper.get_config("table2_ade20k").data.mixture) == ["ade20k"]
    assert list(paper.get_config("table2_coco").data.mixture) == ["coco"]
    pre = paper.get_config("table2_coco_pretrain")
    assert pre.model.num_classes == 133 and pre.data.num_frames == 1
    swin = paper.get_config("table1_swin_l")
    assert swin.model.backbone == "swin" and swin.model.swin.embed_dim == 192 and swin.optim.name == "adamw"
    assert swin.optim.learning_rate == 7e-5 and swin.optim.warmup_steps == 1500
    for name, backbone in (("table1_resnet50", "resnet50"), ("table1_resnest101", "resnest101")):
        c = paper.get_config(name)
        assert c.model.backbone == backbone and c.optim.name == "sgd"
    with pytest.raises(ValueError, match="unknown variant 'table9'"):
        paper.get_config("table9")
    assert paper.get_config() == paper.get_config(paper.DEFAULT)
    assert paper.get_config("runlocal") == paper.get_config(f"{paper.DEFAULT},runlocal")


@pytest.mark.parametrize("module,backbone,depths", [(resnet50, "resnet50", (3, 4, 6, 3)),
                                                     (resnest101, "resnest101", (3, 4, 23, 3))])
def test_cnn_recipe(module, backbone, depths):
    """Sec. 3.2: SGD, lr 0.01, momentum 0.9, weight decay 1e-4 (on every leaf), poly decay (mmseg schedule_20k)."""
    c = module.get_config()
    assert (c.optim.name, c.optim.learning_rate, c.optim.momentum, c.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert c.optim.no_decay_patterns == () and c.optim.warmup_steps == 0
    assert (c.optim.poly_power, c.optim.min_lr) == (0.9, 1e-4)
    assert c.model.backbone == backbone and tuple(c.model.cnn.depths) == depths
    assert tuple(c.data.crop_size) == (768, 768) and c.total_steps == 20_000
    small = module.get_config("runlocal")
    assert small.model.size == "micro" and small.model.backbone == backbone and small.synthetic.videos > 0
    with pytest.raises(AttributeError):
        small.model.cnn.widht = 3


def train_runlocal_two_steps(config: str, workdir) -> None:
    """The train CLI on `config` (a `:runlocal` spec: generated synthetic data): two steps with a finite loss.
    XLA's fastest CPU backend setting and 32x32 crops keep the compile short (as tests/test_train.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    cmd = [sys.executable, "-m", "stcl_jax.train", "--config", config,
           "--workdir", str(workdir), "--config.total_steps=2", "--config.checkpoint_every_steps=2",
           "--config.eval.at_end=False", "--config.data.crop_size=(32,32)", "--config.data.base_size=(32,48)"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [row for row in rows if "train/loss" in row]
    assert [row["step"] for row in steps] == [1, 2] and all(math.isfinite(row["train/loss"]) for row in steps)


def test_resnet50_runlocal_trains_two_steps(tmp_path):
    """`configs/resnet50.py:runlocal` (SGD) trains."""
    train_runlocal_two_steps("configs/resnet50.py:runlocal", tmp_path)
