"""Configs: the paper's recipe, locking (typos fail), runlocal variants, and `--config.x=y` overrides."""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from stcl_jax.config_files import load_config_module  # noqa: E402
demo = load_config_module(os.path.join(REPO, "configs", "demo.py"))
demo_coco_pretrain = load_config_module(os.path.join(REPO, "configs", "demo_coco_pretrain.py"))
swin_b = load_config_module(os.path.join(REPO, "configs", "swin_b.py"))
swin_l = load_config_module(os.path.join(REPO, "configs", "swin_l.py"))
swin_l_coco_pretrain = load_config_module(os.path.join(REPO, "configs", "swin_l_coco_pretrain.py"))
swin_l_joint_ade20k = load_config_module(os.path.join(REPO, "configs", "swin_l_joint_ade20k.py"))
swin_l_joint_coco = load_config_module(os.path.join(REPO, "configs", "swin_l_joint_coco.py"))
swin_s = load_config_module(os.path.join(REPO, "configs", "swin_s.py"))
swin_t = load_config_module(os.path.join(REPO, "configs", "swin_t.py"))

SIZES = {swin_t: ("tiny", 96, 7), swin_s: ("small", 96, 7), swin_b: ("base", 128, 7), swin_l: ("large", 192, 12)}


@pytest.mark.parametrize("module", list(SIZES), ids=lambda m: m.__name__)
def test_paper_recipe(module):
    c = module.get_config()
    size, dim, window = SIZES[module]
    assert (c.model.size, c.model.swin.embed_dim, c.model.swin.window_size) == (size, dim, window)
    assert c.optim.learning_rate == 7e-5 and c.optim.weight_decay == 0.01 and c.optim.warmup_steps == 1500
    assert c.optim.poly_power == 1.0 and c.total_steps == 20_000 and c.global_batch_size == 16
    assert tuple(c.data.crop_size) == (768, 768) and tuple(c.data.scale_range) == (0.5, 2.0)
    assert c.data.flip_prob == 0.5 and c.data.num_frames == 2
    assert c.model.swin.drop_path_rate == 0.3 and c.model.projection.dim == 512 and c.model.dtype == "bfloat16"
    assert (c.loss.ce_weight, c.loss.aux_weight, c.loss.stcl_weight, c.loss.temperature) == (1.0, 0.4, 0.2, 0.07)
    assert "relative_position_bias_table" in c.optim.no_decay_patterns


EXTRA_DATA = [swin_l_coco_pretrain, swin_l_joint_ade20k, swin_l_joint_coco, demo_coco_pretrain]


@pytest.mark.parametrize("module", [*SIZES, demo, *EXTRA_DATA], ids=lambda m: m.__name__)
def test_locked_and_runlocal(module):
    c = module.get_config()
    with pytest.raises(AttributeError):
        c.loss.temperture = 0.1
    with pytest.raises(AttributeError):
        c.model.swin.windowsize = 3
    small = module.get_config("runlocal")
    assert small.model.size == "micro" and small.total_steps <= 10 and small.data.worker_count == 0
    assert tuple(small.data.crop_size) == (64, 64)
    with pytest.raises(ValueError, match="runlokal"):
        module.get_config("runlokal")


def test_extra_data_configs():
    pre = swin_l_coco_pretrain.get_config()
    assert pre.model.num_classes == 133 and pre.data.num_frames == 1 and not pre.data.mixture
    assert pre.model.size == "large" and "conv_seg" in pre.init_from_reset
    assert swin_l_coco_pretrain.get_config("runlocal").model.num_classes == 133
    for module, name, label_map in ((swin_l_joint_ade20k, "ade20k", "ade20k_to_vspw"),
                                    (swin_l_joint_coco, "coco", "coco_panoptic_to_vspw")):
        c = module.get_config()
        assert list(c.data.mixture) == [name] and c.data.mixture[name].label_map == label_map
        assert 0 < c.data.mixture[name].ratio < 1 and c.data.num_frames == 2 and c.model.num_classes == 124
        with pytest.raises(AttributeError):
            c.data.mixture[name].ratoi = 0.5
    argv = ["prog", f"--config={REPO}/configs/swin_l_joint_ade20k.py", "--config.data.mixture.ade20k.dir=/data/ade",
            "--config.data.mixture.ade20k.ratio=0.5"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    assert fv.config.data.mixture.ade20k.dir == "/data/ade" and fv.config.data.mixture.ade20k.ratio == 0.5


def test_demo_generates_its_data():
    c = demo.get_config()
    assert c.data.dir == "" and c.synthetic.videos > 0
    assert c.model.dtype == "float32" and c.total_steps >= 100


def test_command_line_overrides():
    argv = ["prog", f"--config={REPO}/configs/swin_l.py:runlocal", "--config.optim.learning_rate=0.5",
            "--config.data.crop_size=(32,48)", "--config.model.swin.drop_path_rate=0.0"]
    fv = flags.FlagValues()  # the override flags are defined from sys_argv when --config is declared
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    c = fv.config
    assert c.optim.learning_rate == 0.5 and tuple(c.data.crop_size) == (32, 48)
    assert c.model.swin.drop_path_rate == 0.0


def test_train_cli_rejects_a_typo(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stcl_jax.train", "--config", "configs/swin_t.py:runlocal",
                        "--config.loss.temperture=0.1", "--workdir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "temperture" in r.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("module", [*SIZES, swin_l_coco_pretrain], ids=lambda m: m.__name__)
def test_runlocal_generates_its_data_without_a_data_dir(module, tmp_path):
    """`configs/swin_*.py:runlocal` with no --config.data.dir resolves to a dataset generated in the workdir."""
    from stcl_jax.training import loop

    c = module.get_config("runlocal")
    assert c.data.dir == "" and "synthetic" in c
    resolved = loop.resolve_data_dir(c, str(tmp_path))
    assert resolved.data.dir == str(tmp_path / "data" / "built") and not os.listdir(tmp_path)
