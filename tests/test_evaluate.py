"""`python -m stcl_jax.evaluate`: scoring prediction PNGs (and its errors) and the model-running form end to end."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from stcl_jax import config_files, evaluate
from stcl_jax.data import synthetic
from stcl_jax.data.datasets import vspw
from stcl_jax.data.sources import scoring_label_space
from stcl_jax.evaluation import metrics, runner


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw") / "VSPW_480p")
    synthetic.write_synthetic_vspw(root, videos=3, frames=10, size=(32, 48), seed=5)
    return root


def _masks(root, video):
    return np.stack([np.asarray(Image.open(vspw.mask_path(root, video, n))) for n in vspw.mask_names(root, video)])


def _write_predictions(root, out, corrupt_seed=0):
    """Ground truth as train ids (ignored pixels -> 0) with a few wrong pixels."""
    rng = np.random.default_rng(corrupt_seed)
    for video in vspw.read_split(root, "val"):
        for name in vspw.mask_names(root, video):
            ids = vspw.raw_to_train_ids(np.asarray(Image.open(vspw.mask_path(root, video, name))))
            ids = np.where(ids == 255, 0, ids)
            wrong = rng.random(ids.shape) < 0.1
            ids[wrong] = rng.integers(0, 124, wrong.sum())
            runner.write_prediction(os.path.join(out, video, name + ".png"), ids)


def test_score_predictions_matches_direct_metrics(raw_root, tmp_path):
    pred = str(tmp_path / "pred")
    _write_predictions(raw_root, pred)
    out = str(tmp_path / "scores.json")
    assert evaluate.main(["--predictions", pred, "--data-root", raw_root, "--split", "val", "--json", out]) == 0
    with open(out) as f:
        scores = json.load(f)
    ev = metrics.VSPWEvaluator()
    for video in vspw.read_split(raw_root, "val"):
        names = vspw.mask_names(raw_root, video)
        preds = np.stack([np.asarray(Image.open(os.path.join(pred, video, n + ".png"))) for n in names])
        ev.add_video(video, _masks(raw_root, video), preds)
    want = ev.result()
    for key in ("miou", "wiou", "pixel_acc", "mean_class_acc", "vc8"):
        assert scores[key] == pytest.approx(want[key], rel=1e-12), key
    assert 0.5 < scores["miou"] < 1.0 and scores["vc16"] is None  # 10 frames: no VC16 window
    assert scores["class_names"][0] == "wall" and len(scores["iou"]) == 124
    assert np.asarray(scores["confusion_matrix"]).shape == (124, 124)


def test_score_predictions_errors_name_the_file(raw_root, tmp_path):
    pred = str(tmp_path / "pred")
    _write_predictions(raw_root, pred)
    video = vspw.read_split(raw_root, "val")[0]
    name = vspw.mask_names(raw_root, video)[3]
    path = os.path.join(pred, video, name + ".png")
    args = ["--predictions", pred, "--data-root", raw_root, "--split", "val", "--pred-ids", "train"]
    good = np.asarray(Image.open(path))

    Image.fromarray(np.full_like(good, 124)).save(path)
    with pytest.raises(ValueError, match=f"{path}.*value 124"):
        evaluate.main(args)
    Image.fromarray(good[:, :-2]).save(path)
    with pytest.raises(ValueError, match=f"{path}.*resolution"):
        evaluate.main(args)
    Image.fromarray(np.stack([good] * 3, -1)).save(path)
    with pytest.raises(ValueError, match=f"{path}.*single-channel"):
        evaluate.main(args)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match=f"{path} is missing"):
        evaluate.main(args)
    with pytest.raises(SystemExit):
        evaluate.main(["--predictions", pred])  # no --data-root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from stcl_jax.models import build_segmenter, model_config
    from stcl_jax.models.io import save_variables

    cfg = model_config("micro")
    variables = random_variables(build_segmenter(cfg))
    return save_variables(str(tmp_path_factory.mktemp("model") / "micro"), variables, cfg)


def random_variables(model, seed=0):
    """Random weights from the shapes of `model.init` (traced, not compiled: compiling init is slow on CPU)."""
    k = jax.random.key(0)
    shapes = jax.eval_shape(model.init, {"params": k, "dropout": k, "drop_path": k}, np.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = jax.tree_util.keystr(path)
        if "'var'" in name or "'scale'" in name:
            return np.ones(s.shape, s.dtype)
        return (rng.normal(size=s.shape) * 0.1).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


def test_model_form_end_to_end(raw_root, model_dir, tmp_path):
    from stcl_jax.data import build

    built = str(tmp_path / "built")
    build.build_dataset(raw_root, built, splits=("val",), progress=False)
    pred = str(tmp_path / "pred")
    out = str(tmp_path / "model.json")
    args = ["--checkpoint", model_dir, "--data", built, "--split", "val", "--mode", "slide", "--crop", "32", "32",
            "--stride", "16", "16", "--batch-size", "4", "--save-predictions", pred, "--json", out]
    assert evaluate.main(args) == 0
    with open(out) as f:
        scores = json.load(f)
    assert scores["num_videos"] == 1 and scores["num_frames"] == 10
    assert scores["inference"]["mode"] == "slide" and scores["checkpoints"] == [model_dir]
    assert runner.read_id_space(pred) == "train"           # the saved PNGs say which ids they hold
    # the saved PNGs, scored against the raw layout, give exactly the same numbers
    rescored = runner.score_prediction_dir(pred, raw_root, "val")
    for key in ("miou", "wiou", "pixel_acc", "mean_class_acc", "vc8"):
        assert rescored[key] == pytest.approx(scores[key], rel=1e-12), key
    # the training loop's entry point, configured like the command above, gives the same scores
    from stcl_jax.models import build_segmenter
    from stcl_jax.models.io import load_variables

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load_config(os.path.join(root, "configs", "swin_t.py") + ":runlocal")
    config.data.dir, config.data.val_split = built, "val"
    config.eval.mode, config.eval.crop, config.eval.stride = "slide", (32, 32), (16, 16)
    variables, model_cfg = load_variables(model_dir)
    space = scoring_label_space(config.data.dir, config.data.label_map)
    direct = runner.evaluate_segmenter(build_segmenter(model_cfg), variables, config, space)
    for key in ("miou", "wiou", "vc8"):
        assert direct[key] == pytest.approx(scores[key], rel=1e-12), key
    shutil.rmtree(built)


def test_inference_options_from_config_and_flags():
    from stcl_jax.evaluation import cli, inference

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_files.load_config(os.path.join(root, "configs", "swin_t.py") + ":runlocal")
    p = evaluate._parser()
    opts = cli.inference_options(p.parse_args([]), config)
    assert (opts["mode"], opts["crop"], opts["stride"]) == (config.eval.mode, config.eval.crop, config.eval.stride)
    assert opts["scales"] == (1.0,) and not opts["flip"] and opts["mean"] == tuple(config.data.mean)
    opts = cli.inference_options(p.parse_args(["--tta", "--mode", "slide", "--crop", "8", "9"]), config)
    assert opts["scales"] == inference.DEFAULT_SCALES and opts["flip"] and opts["mode"] == "slide"
    assert opts["crop"] == (8, 9)
    assert cli.inference_options(p.parse_args([]))["crop"] == (768, 768)  # mmseg's defaults without a config
