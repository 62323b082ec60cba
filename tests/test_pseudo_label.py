"""stcl_jax.pseudo_label: the thresholding rule pixel for pixel against a NumPy float64 reference of the teacher
(ensemble of two tiny models, flip TTA), unchanged frame bytes, resume, the per-class report and the records."""

import json
import os

import jax
import numpy as np
import pytest

from stcl_jax import pseudo_label as pl
from stcl_jax.data import records
from stcl_jax.data.datasets import vspw
from stcl_jax.data.build import build_dataset
from stcl_jax.data.synthetic import write_synthetic_vspw
from stcl_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from stcl_jax.evaluation import inference
from stcl_jax.evaluation.cli import load_member
from stcl_jax.models import build_segmenter, model_config
from stcl_jax.models.io import save_variables

NUM_CLASSES = 5


def test_threshold_rule_matches_numpy():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(NUM_CLASSES, 0.7), size=(3, 7, 9)).astype(np.float32)
    probs[0, 0, 0] = [0.5, 0.2, 0.1, 0.1, 0.1]  # exactly at the threshold: void (the paper's "exceed")
    probs[0, 0, 1] = [0.1, 0.5000001, 0.2, 0.1, 0.0999999]  # just above it (0.5 + 1 ulp at float32): kept
    assert probs[0, 0, 0, 0] == np.float32(0.5) and probs[0, 0, 1, 1] > np.float32(0.5)
    labels, predicted, kept = (np.asarray(x) for x in pl.threshold_labels(probs, 0.5))
    top, cls = probs.max(-1), probs.argmax(-1)
    np.testing.assert_array_equal(labels, np.where(top > 0.5, cls, 255))
    assert labels[0, 0, 0] == 255 and labels[0, 0, 1] == 1
    np.testing.assert_array_equal(predicted, np.bincount(cls.ravel(), minlength=NUM_CLASSES))
    np.testing.assert_array_equal(kept, np.bincount(cls[top > 0.5], minlength=NUM_CLASSES))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pl")
    write_synthetic_vspw(str(root / "raw"), videos=4, frames=3, size=(32, 48), seed=1)
    build_dataset(str(root / "raw"), str(root / "built"), splits=("train",), progress=False)
    return root / "built"


def _teacher_members():
    cfg = model_config("micro", num_classes=NUM_CLASSES, window_size=4)
    model = build_segmenter(cfg)
    x = np.zeros((1, 32, 48, 3), np.float32)
    # Random variables of the right structure without compiling model.init (slow on a busy 2-core CPU).
    shapes = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k, "drop_path": k}, x, train=False),
                            jax.random.key(0))

    def fill(seed):
        rng = np.random.default_rng(seed)

        def leaf(path, s):
            name = jax.tree_util.keystr(path)
            if name.endswith("['var']"):
                return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
            return (rng.normal(0.0, 0.1, s.shape) + (1.0 if name.endswith("['scale']") else 0.0)).astype(s.dtype)
        return jax.tree_util.tree_map_with_path(leaf, shapes)
    return [(model, fill(s)) for s in (1, 2)]


def _reference_probs(members, frames):
    """Mean softmax (float64) over both models and the flipped view, by direct model.apply calls."""
    images = (frames.astype(np.float64) - IMAGENET_MEAN) / IMAGENET_STD
    total = 0.0
    model = members[0][0]
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    for _, variables in members:
        for flip in (False, True):
            x = images[:, :, ::-1] if flip else images
            logits = np.asarray(apply(variables, np.ascontiguousarray(x, np.float32)), np.float64)
            logits = logits[:, :, ::-1] if flip else logits
            e = np.exp(logits - logits.max(-1, keepdims=True))
            total = total + e / e.sum(-1, keepdims=True)
    return total / (2 * len(members))


def _safe_threshold(top: np.ndarray) -> float:
    """A threshold near the median top probability, in the middle of a gap between observed values, so that
    float32-vs-float64 differences (~1e-7) cannot move a pixel across it."""
    v = np.unique(top.ravel())
    lo, hi = len(v) // 4, 3 * len(v) // 4
    gaps = v[lo + 1 : hi + 1] - v[lo:hi]
    i = lo + int(np.argmax(gaps))
    assert v[i + 1] - v[i] > 1e-5
    return float((v[i] + v[i + 1]) / 2)


def test_pseudo_labels_follow_the_rule_and_resume(dataset, tmp_path):
    """The CLI on two exported teachers (ensemble) with flip TTA, against the float64 reference."""
    members = _teacher_members()
    cfg = model_config("micro", num_classes=NUM_CLASSES, window_size=4)
    exports = [save_variables(str(tmp_path / f"teacher{i}"), v, cfg) for i, (_, v) in enumerate(members)]
    source = records.open_split(str(dataset), "train")
    recs = [source[i] for i in range(len(source))]
    frames = np.stack([records.decode_image(r["image"]) for r in recs])
    ref = _reference_probs(members, frames)
    top, cls = ref.max(-1), ref.argmax(-1)
    threshold = _safe_threshold(top)
    expected = np.where(top > threshold, cls, 255)
    assert 0.2 < (expected != 255).mean() < 0.8  # both branches of the rule are exercised

    out = str(tmp_path / "out")
    args = ["--checkpoints", *exports, "--data", str(dataset), "--split", "train", "--output", out,
            "--threshold", repr(threshold), "--mode", "whole", "--flip", "--batch-size", "2"]
    assert pl.main(args) == 0
    for r, exp, c, t in zip(recs, expected, cls, top):
        video, name = records.text(r["video"]), records.text(r["frame_name"])
        frame_dir = os.path.join(out, "layout", "data", video)
        raw = records.decode_mask(open(os.path.join(frame_dir, "mask", f"{name}.png"), "rb").read())
        np.testing.assert_array_equal(vspw.raw_to_train_ids(raw), exp)   # pixel for pixel
        assert open(os.path.join(frame_dir, "origin", f"{name}.jpg"), "rb").read() == bytes(r["image"])
        stats = pl._done_frames(os.path.join(out, "stats", f"{video}.jsonl"))[name]
        np.testing.assert_array_equal(stats["predicted"], np.bincount(c.ravel(), minlength=NUM_CLASSES))
        np.testing.assert_array_equal(stats["kept"], np.bincount(c[t > threshold], minlength=NUM_CLASSES))

    report = json.loads(open(os.path.join(out, "report.json")).read())
    assert report["frames"] == 6 and report["videos"] == 2
    for row in report["per_class"]:
        assert row["predicted_pixels"] == int((cls == row["id"]).sum())
        assert row["kept_pixels"] == int(((cls == row["id"]) & (top > threshold)).sum())
    assert report["kept_fraction"] == pytest.approx((expected != 255).mean(), abs=1e-12)
    assert "| id | class | predicted px | kept px | kept |" in open(os.path.join(out, "report.md")).read()

    # Records in the training format: same JPEG bytes, masks = the pseudo labels.
    extra = records.open_split(os.path.join(out, "records"), "extra")
    assert len(extra) == 6
    by_name = {(records.text(r["video"]), records.text(r["frame_name"])): (r, e) for r, e in zip(recs, expected)}
    for i in range(len(extra)):
        rec = extra[i]
        src, exp = by_name[(records.text(rec["video"]), records.text(rec["frame_name"]))]
        assert bytes(rec["image"]) == bytes(src["image"]) and bool(rec["has_label"])
        np.testing.assert_array_equal(vspw.raw_to_train_ids(records.decode_mask(rec["mask"])), exp)

    # Rerun: nothing to do. Drop one frame's stats line (as if killed after its PNG): only that frame is redone.
    teacher = pl.make_teacher([(inference.segmenter_apply(m), v) for m, v in members], threshold=threshold,
                              batch_size=2, mode="whole", flip=True)
    assert pl.label_split(teacher, str(dataset), "train", out) == {"videos": 2, "frames": 0, "skipped": 6}
    video0 = records.text(recs[0]["video"])
    stats_path = os.path.join(out, "stats", f"{video0}.jsonl")
    lines = open(stats_path).read().splitlines()
    open(stats_path, "w").write("\n".join(lines[:-1]) + "\n")
    assert pl.label_split(teacher, str(dataset), "train", out) == {"videos": 2, "frames": 1, "skipped": 5}
    assert sorted(open(stats_path).read().splitlines()) == sorted(lines)  # the same stats, recomputed


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="--threshold must be in"):
        pl.make_teacher([], threshold=1.5)
    with pytest.raises(FileNotFoundError, match="neither a params-only export"):
        load_member(str(tmp_path))
    os.makedirs(tmp_path / "out" / "stats")
    with pytest.raises(ValueError, match="no frame was labelled"):
        pl.write_report(str(tmp_path / "out"), 0.5)
