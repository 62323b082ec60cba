"""VSPW metrics: hand-computed cases and an independent plain-NumPy implementation of the official scripts."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stcl_jax.evaluation import metrics


# ------------------------------------------------------------------ independent reference (loops, as the scripts)
def ref_scores(labels_list, preds_list, c):
    cm = np.zeros((c, c), np.int64)
    for lab, pred in zip(labels_list, preds_list):
        for g, p in zip(lab.ravel(), pred.ravel()):
            if g != 255:
                cm[g, p] += 1
    tp, rows, cols = np.diag(cm).astype(float), cm.sum(1).astype(float), cm.sum(0).astype(float)
    ious, accs, wiou = [], [], 0.0
    for k in range(c):
        if rows[k] == 0:
            continue
        iou = tp[k] / (rows[k] + cols[k] - tp[k])
        ious.append(iou)
        accs.append(tp[k] / rows[k])
        wiou += rows[k] / rows.sum() * iou
    return cm, dict(miou=np.mean(ious), wiou=wiou, pixel_acc=tp.sum() / rows.sum(), mean_class_acc=np.mean(accs))


def ref_vc(gts, preds, n, min_frames=0):
    """VC_perclip.py: windows i in range(F - n), AND of frame-pairs (i, i+j), pooled nanmean."""
    accs = []
    for gt, pred in zip(gts, preds):
        if len(gt) <= max(n, min_frames):
            continue
        for i in range(len(gt) - n):
            g_common = np.ones(gt.shape[1:], bool)
            p_common = np.ones(gt.shape[1:], bool)
            for j in range(1, n):
                g_common &= gt[i] == gt[i + j]
                p_common &= pred[i] == pred[i + j]
            with np.errstate(invalid="ignore", divide="ignore"):
                accs.append((g_common & p_common).sum() / g_common.sum())
    return np.nanmean(accs) if accs else None


def to_train(raw):
    out = raw.astype(np.int64) - 1
    out[(raw == 0) | (raw == 255)] = 255
    return out


# ------------------------------------------------------------------ hand-computed cases
def test_scores_hand_computed_with_absent_and_ignored_class():
    labels = np.array([[[0, 0, 1], [1, 255, 2]]])
    preds = np.array([[[0, 1, 1], [1, 0, 3]]])  # class 3 predicted but absent from the ground truth
    cm = metrics.confusion_matrix(labels, preds, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[0, 1] = expected[2, 3] = 1
    expected[1, 1] = 2
    np.testing.assert_array_equal(cm, expected)
    s = metrics.scores_from_confusion(cm)
    # IoU: class0 1/(2+1-1), class1 2/(2+3-2), class2 0/(1+0-0); class 3 left out (no ground truth)
    assert s["miou"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3, rel=1e-12)
    assert s["wiou"] == pytest.approx(2 / 5 * 0.5 + 2 / 5 * 2 / 3, rel=1e-12)
    assert s["pixel_acc"] == pytest.approx(3 / 5, rel=1e-12)
    assert s["mean_class_acc"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, rel=1e-12)
    assert s["iou"][3] is None and s["iou"][2] == 0.0


def _vc_video(num_frames):
    """Five pixels (1 x 5): a, b, c, d, e as described in test_vc_hand_computed."""
    gt = np.zeros((num_frames, 1, 5), np.uint8)
    gt[:, 0, 0] = 5                      # a: constant class
    gt[:, 0, 1] = 255                    # b: constant void
    gt[:, 0, 2] = 7
    gt[8:, 0, 2] = 9                     # c: changes at frame 8
    gt[:, 0, 3] = np.arange(num_frames) % 2 * 255  # d: alternates "others" (0) and void (255)
    gt[:, 0, 4] = 3                      # e: constant
    pred = np.zeros((num_frames, 1, 5), np.int64)
    pred[3:, 0, 0] = 1                   # a: prediction changes at frame 3
    pred[9:, 0, 4] = 2                   # e: prediction changes at frame 9
    return gt, pred


def test_vc_hand_computed_window_count_and_void():
    gt, pred = _vc_video(10)
    # n = 8, windows i = 0, 1 (F - n = 2; the last window i = 2 is never scored):
    #   i=0: G = {a, b, c, e} (b is void but identical), P & G = {b, c, e} -> 3/4
    #   i=1: G = {a, b, e} (c changed at 8), P & G = {b, e} -> 2/3
    both, same = metrics.video_window_counts(gt, pred, 8)
    np.testing.assert_array_equal(both, [3, 2])
    np.testing.assert_array_equal(same, [4, 3])
    assert metrics.vc_score(both, same) == pytest.approx((3 / 4 + 2 / 3) / 2, rel=1e-12)
    # mapped ground truth: d ("others" <-> void) becomes identical (255) and joins G and P & G
    both_m, same_m = metrics.video_window_counts(to_train(gt), pred, 8)
    np.testing.assert_array_equal(both_m, [4, 3])
    np.testing.assert_array_equal(same_m, [5, 4])


def test_evaluator_short_videos_and_protocols():
    ev = metrics.VSPWEvaluator(windows=(8, 16))
    gt10, pred10 = _vc_video(10)
    ev.add_video("v10", gt10, pred10)
    ev.add_video("v8", gt10[:8], pred10[:8])  # F = 8 <= n: no VC8 window at all
    ev.add_video("v5", gt10[:5], pred10[:5])
    r = ev.result()
    assert r["vc8"] == pytest.approx((3 / 4 + 2 / 3) / 2, rel=1e-12)
    assert (r["vc8_videos"], r["vc8_windows"]) == (1, 2)
    assert r["vc16"] is None and r["vc16_videos"] == 0
    assert (r["num_videos"], r["num_frames"]) == (3, 23)
    # cffm protocol: videos with <= 16 frames are skipped for VC8 too
    ev = metrics.VSPWEvaluator(windows=(8, 16), vc_protocol="cffm")
    ev.add_video("v10", gt10, pred10)
    assert ev.result()["vc8"] is None
    gt17, pred17 = _vc_video(17)
    ev.add_video("v17", gt17, pred17)
    r = ev.result()
    assert r["vc8_videos"] == 1 and r["vc16_videos"] == 1 and r["vc16_windows"] == 1
    assert r["vc8"] == pytest.approx(ref_vc([to_train(gt17)], [pred17], 8), rel=1e-12)


def test_evaluator_rejects_bad_predictions():
    ev = metrics.VSPWEvaluator()
    gt = np.ones((2, 3, 4), np.uint8)
    with pytest.raises(ValueError, match="video clipA.*0..123"):
        ev.add_video("clipA", gt, np.full((2, 3, 4), 124))
    with pytest.raises(ValueError, match="video clipB"):
        ev.add_video("clipB", gt, np.zeros((2, 3, 5), np.int64))
    with pytest.raises(ValueError, match="outside 0..3"):
        metrics.confusion_matrix(np.zeros((1, 2, 2), np.int64), np.full((1, 2, 2), 4), num_classes=4)


# ------------------------------------------------------------------ random data vs the reference
def _random_videos(rng, count, classes=(0, 1, 2, 3, 5, 124, 255)):
    gts, preds = [], []
    for _ in range(count):
        f = int(rng.integers(3, 26))
        h, w = 6, 7
        # piecewise-constant over time so that windows have identical pixels
        base = rng.choice(classes, size=(h, w))
        gt = np.repeat(base[None], f, axis=0).astype(np.uint8)
        flips = rng.random((f, h, w)) < 0.04
        gt[flips] = rng.choice(classes, size=flips.sum())
        pred = np.clip(to_train(gt), 0, 123)
        noise = rng.random((f, h, w)) < 0.15
        pred[noise] = rng.choice([0, 1, 2, 3, 4, 123], size=noise.sum())
        gts.append(gt)
        preds.append(pred)
    return gts, preds


@pytest.mark.parametrize("protocol", ["vspw", "cffm"])
def test_evaluator_matches_numpy_reference(protocol):
    rng = np.random.default_rng(0 if protocol == "vspw" else 1)
    gts, preds = _random_videos(rng, 12)
    ev = metrics.VSPWEvaluator(vc_protocol=protocol, frames_per_update=5)
    for i, (g, p) in enumerate(zip(gts, preds)):
        ev.add_video(f"v{i}", g, p)
    r = ev.result()
    cm, ref = ref_scores([to_train(g) for g in gts], preds, 124)
    np.testing.assert_array_equal(r["confusion_matrix"], cm)
    for key, value in ref.items():
        assert r[key] == pytest.approx(value, rel=1e-12), key
    vc_gts = gts if protocol == "vspw" else [to_train(g) for g in gts]
    min_frames = 16 if protocol == "cffm" else 0
    for n in (8, 16):
        expected = ref_vc(vc_gts, preds, n, min_frames)
        assert expected is not None and r[f"vc{n}"] == pytest.approx(expected, rel=1e-12)
    table = metrics.format_table(r)
    assert "wall" in table and "miou=" in table


def test_long_video_spans_several_chunks():
    rng = np.random.default_rng(3)
    f = 2 * metrics._VC_CHUNK + 20
    gt = np.repeat(rng.integers(0, 3, (1, 4, 5)), f, axis=0).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.02] = 7
    pred = gt.astype(np.int64).copy()
    pred[rng.random(gt.shape) < 0.05] = 1
    both, same = metrics.video_window_counts(gt, pred, 16)
    assert len(both) == f - 16
    assert metrics.vc_score(both, same) == pytest.approx(ref_vc([gt], [pred], 16), rel=1e-12)


def test_sliding_all_every_width():
    x = np.random.default_rng(4).random((40, 3)) < 0.9
    for k in range(1, 20):
        length = len(x) - k + 1
        want = np.stack([x[t : t + k].all(axis=0) for t in range(length)])
        np.testing.assert_array_equal(metrics._sliding_all(x, k, length), want, err_msg=f"k={k}")


def test_window_counts_several_n_in_one_pass_match_single_n():
    rng = np.random.default_rng(5)
    gt = np.repeat(rng.integers(0, 3, (1, 5, 6)), 45, axis=0).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.01] = 9
    pred = gt.astype(np.int64)
    pred[rng.random(gt.shape) < 0.02] = 1
    both = metrics.video_window_counts(gt, pred, (8, 16, 3))
    for n in (8, 16, 3):
        single = metrics.video_window_counts(gt, pred, n)
        assert len(single[0]) == 45 - n
        np.testing.assert_array_equal(both[n][0], single[0])
        np.testing.assert_array_equal(both[n][1], single[1])
        assert metrics.vc_score(*single) == pytest.approx(ref_vc([gt], [pred], n), rel=1e-12)


# ------------------------------------------------------------------ several devices (subprocess: XLA_FLAGS)
_SHARDED = textwrap.dedent("""
    import numpy as np, jax
    from stcl_jax.evaluation import metrics
    assert jax.local_device_count() == 8
    metrics._INT32_MAX = 200  # force many flushes of the per-device int32 partial matrices into the host total
    rng = np.random.default_rng(0)
    acc = metrics.ConfusionAccumulator(num_classes=5)
    ref = np.zeros((5, 5), np.int64)
    for n in (3, 8, 11):
        labels = rng.choice([0, 1, 2, 3, 4, 255], size=(n, 4, 3))
        preds = rng.integers(0, 5, size=(n, 4, 3))
        acc.update(labels, preds)
        valid = labels != 255
        np.add.at(ref, (labels[valid], preds[valid]), 1)
    cm, bad = acc.counts()
    assert bad == 0
    np.testing.assert_array_equal(cm, ref)
    print("OK", cm.sum())
""")


def test_confusion_accumulator_sharded_over_8_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK")
