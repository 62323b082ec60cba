"""Bad inputs of the data side (docs/faults.md, "Data"): each test builds a tiny VSPW tree with one fault and checks
that the build (or the reader) orders, accepts, refuses or reports it as promised, naming the file."""

import logging
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from stcl_jax import evaluate, predict
from stcl_jax.data import build, records, synthetic
from stcl_jax.data.datasets import vspw
from stcl_jax.evaluation import metrics, runner

SIZE = (32, 48)
FRAMES = 10


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw") / "VSPW_480p")
    synthetic.write_synthetic_vspw(root, videos=3, frames=FRAMES, size=SIZE, seed=3)
    return root


@pytest.fixture()
def raw(tree, tmp_path):
    root = str(tmp_path / "raw")
    shutil.copytree(tree, root)
    return root


def _video(root, split="train"):
    return vspw.read_split(root, split)[0]


def _origin(root, video):
    return os.path.join(vspw.video_dir(root, video), "origin")


def _rename_frame(root, video, name, new_name, frame_ext=".jpg"):
    """Renames frame `name` (and its mask) of `video` to `new_name`, the frame with extension `frame_ext`."""
    os.rename(vspw.frame_path(root, video, name), os.path.join(_origin(root, video), new_name + frame_ext))
    if os.path.exists(vspw.mask_path(root, video, name)):
        os.rename(vspw.mask_path(root, video, name), vspw.mask_path(root, video, new_name))


def _built_names(out, split="train"):
    src = records.open_split(out, split)
    return [records.text(src[i]["frame_name"]) for i in range(len(src))]


def _build(root, out, splits=("train",), **kw):
    return build.build_dataset(root, str(out), splits=splits, progress=False, **kw)


def test_unpadded_frame_names_keep_numeric_order(raw, tmp_path):
    video = _video(raw)
    names = vspw.frame_names(raw, video)
    jpegs = [open(vspw.frame_path(raw, video, n), "rb").read() for n in names]
    unpadded = [str(8 + k) for k in range(FRAMES)]         # 8, 9, 10, ...: as strings 10 < 11 < ... < 8 < 9
    for name, new_name in zip(names, unpadded):
        _rename_frame(raw, video, name, new_name)
    assert vspw.frame_names(raw, video) == unpadded
    out = tmp_path / "out"
    _build(raw, out)
    assert _built_names(out) == unpadded
    src = records.open_split(str(out), "train")
    assert [src[i]["image"] for i in range(FRAMES)] == jpegs     # the frames in their video order


def test_jpeg_and_upper_case_extensions_are_frames(raw, tmp_path):
    video = _video(raw)
    names = vspw.frame_names(raw, video)
    _rename_frame(raw, video, names[1], names[1], ".jpeg")
    _rename_frame(raw, video, names[3], names[3], ".JPG")
    mask = vspw.mask_path(raw, video, names[2])
    os.rename(mask, mask[: -len(".png")] + ".PNG")
    out = tmp_path / "out"
    report = _build(raw, out)
    assert report["skipped"] == [] and _built_names(out) == names
    assert records.open_split(str(out), "train")[2]["has_label"]


@pytest.mark.parametrize("stray, reason", [("notes.txt", "not a frame file"), ("cover.png", "not a frame file"),
                                           ("frame_a.jpg", "not a frame number")])
def test_a_file_that_is_not_a_frame_is_reported_never_dropped(raw, tmp_path, stray, reason):
    video = _video(raw)
    path = os.path.join(_origin(raw, video), stray)
    shutil.copy(vspw.frame_path(raw, video, vspw.frame_names(raw, video)[0]), path)
    with pytest.raises(build.BadInputError, match=reason) as err:
        _build(raw, tmp_path / "strict")
    assert path in str(err.value)
    report = _build(raw, tmp_path / "skip", skip_bad=True)
    assert [b["path"] for b in report["skipped"]] == [path]
    assert report["splits"]["train"]["frames"] == FRAMES       # the real frames are all kept


def test_two_files_of_one_frame_are_refused_naming_both(raw, tmp_path):
    video = _video(raw)
    name = vspw.frame_names(raw, video)[2]
    first = vspw.frame_path(raw, video, name)
    second = os.path.join(_origin(raw, video), f"{int(name)}.jpeg")    # the same frame number, unpadded
    shutil.copy(first, second)
    with pytest.raises(build.BadInputError, match=f"2 files are frame {int(name)}") as err:
        _build(raw, tmp_path / "out")
    assert first in str(err.value) and second in str(err.value)


def test_a_video_in_two_splits_is_refused(raw, tmp_path):
    video = _video(raw)
    with open(vspw.split_file(raw, "val"), "a") as f:
        f.write(video + "\n")
    with pytest.raises(build.BadInputError, match=f"{video}.*listed in both .*train.txt and .*val.txt"):
        _build(raw, tmp_path / "out", splits=("train", "val"))


def test_a_frame_of_another_size_is_refused_at_build_time(raw, tmp_path):
    video = _video(raw)
    name = vspw.frame_names(raw, video)[3]
    path = vspw.frame_path(raw, video, name)
    Image.open(path).resize((SIZE[1] + 4, SIZE[0])).save(path)
    Image.open(vspw.mask_path(raw, video, name)).resize((SIZE[1] + 4, SIZE[0])).save(vspw.mask_path(raw, video, name))
    with pytest.raises(build.BadInputError, match=f"{path}: frame size 32x52 differs from 32x48 .*{video}"):
        _build(raw, tmp_path / "out")


def test_skip_bad_with_every_frame_bad_lists_them(raw, tmp_path):
    video = _video(raw)
    paths = [vspw.frame_path(raw, video, n) for n in vspw.frame_names(raw, video)]
    for p in paths:
        open(p, "wb").write(b"not a jpeg")
    with pytest.raises(build.BadInputError, match="split 'train' has no usable frame") as err:
        _build(raw, tmp_path / "out", skip_bad=True)
    assert all(p in str(err.value) for p in paths[:5]) and f"and {FRAMES - 5} more" in str(err.value)


def test_a_split_missing_from_a_complete_build_is_an_error_saying_how(tree, tmp_path):
    out = tmp_path / "out"
    _build(tree, out)
    with pytest.raises(ValueError, match=r"has splits \['train'\], not \['val'\].*--splits train,val"):
        _build(tree, out, splits=("train", "val"))
    assert _build(tree, out)["splits"]["train"]["frames"] == FRAMES      # the complete split is still served


def test_a_stale_incomplete_folder_is_removed_with_a_line(tree, tmp_path, capsys):
    out = tmp_path / "out"
    stale = out / "vspw" / "480p" / "incomplete.ABCDEF_1.0.0"
    stale.mkdir(parents=True)
    (stale / "vspw-train.array_record-00000-of-00001").write_bytes(b"half a shard")
    _build(tree, out)
    assert not stale.exists() and f"removing {stale}" in capsys.readouterr().out
    assert os.listdir(out / "vspw" / "480p") == ["1.0.0"]


def test_a_corrupt_shard_names_the_file_and_record(tree, tmp_path):
    out = tmp_path / "out"
    n = _build(tree, out)["splits"]["train"]["frames"]    # (not opened before: readers keep open files)
    shard, = (out / "vspw" / "480p" / "1.0.0").glob("vspw-train.array_record-*")
    data = bytearray(shard.read_bytes())
    nonzero = np.flatnonzero(data)              # the records (the file is zero-padded to blocks)
    mid = int(nonzero[len(nonzero) // 3])
    data[mid: mid + 256] = bytes(b ^ 0xFF for b in data[mid: mid + 256])
    shard.write_bytes(bytes(data))
    src, bad = records.open_split(str(out), "train"), []
    for i in range(n):
        try:
            src[i]
        except records.RecordReadError as e:
            bad.append((i, str(e)))
    assert bad, "flipping 256 bytes of the shard must make a record unreadable"
    i, message = bad[0]
    assert f"record {i} of split 'train' (record {i} of shard {shard})" in message and "hash mismatch" in message
    assert np.all([m.startswith("record ") for _, m in bad])


# ------------------------------------------------------------------------------------------------ predict input
def _write_image(path, seed=0, size=SIZE):
    rgb = (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=95)
    return rgb


def test_predict_folder_frames_in_natural_order(tmp_path):
    for k in (8, 9, 10, 11, 12):
        _write_image(tmp_path / f"frame_{k}.png", k)
    chunks, _ = predict.read_frames(str(tmp_path), chunk=2)
    names = [n for chunk_names, _ in chunks for n in chunk_names]
    assert names == ["frame_8", "frame_9", "frame_10", "frame_11", "frame_12"]


def test_predict_refuses_two_files_of_one_frame(tmp_path):
    _write_image(tmp_path / "00000541.jpg")
    _write_image(tmp_path / "00000541.png")
    with pytest.raises(ValueError, match="00000541.jpg and .*00000541.png are both frame '00000541'"):
        predict.read_frames(str(tmp_path))


def test_predict_refuses_a_truncated_jpeg(tmp_path):
    for k in range(3):
        _write_image(tmp_path / f"{k:08d}.jpg", k)
    path = tmp_path / "00000001.jpg"
    path.write_bytes(path.read_bytes()[:-200])               # opencv alone decodes this, grey-filled
    chunks, _ = predict.read_frames(str(tmp_path))
    with pytest.raises(ValueError, match=f"frame {path} could not be read as an image.*truncated"):
        next(chunks)


def test_predict_lists_the_files_it_skips(tmp_path, caplog):
    _write_image(tmp_path / "00000001.JPG")
    (tmp_path / "notes.txt").write_text("not a frame")
    with caplog.at_level(logging.WARNING, logger="stcl_jax.predict"):
        chunks, _ = predict.read_frames(str(tmp_path))
    assert "skipping 1 files that are not .jpg/.jpeg/.png frames: notes.txt" in caplog.text
    assert next(chunks)[0] == ["00000001"]


def _truncated_avi(path, n=12):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (SIZE[1], SIZE[0]))
    assert writer.isOpened()
    for k in range(n):
        writer.write(cv2.cvtColor(_write_image(path.parent / "tmp.png", k), cv2.COLOR_RGB2BGR))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                  # the header still declares n frames


def _fake_predictor(frames):
    """Train ids from the pixel values (no model): class = red channel // 64 (0..3)."""
    return (np.asarray(frames)[..., 0] // 64).astype(np.uint8)


def test_predict_on_a_truncated_video_fails_after_writing_what_it_read(tmp_path):
    video = tmp_path / "clip.avi"
    _truncated_avi(video)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"only \d+ of the 12 frames its header declares could be decoded"):
        predict.predict_source(_fake_predictor, str(video), str(out), chunk=3)
    written = sorted(n for n in os.listdir(out / "labels") if n.endswith(".png"))
    assert 0 < len(written) < 12
    n = predict.predict_source(_fake_predictor, str(video), str(tmp_path / "out2"), allow_truncated=True)
    assert n == len(written)


def test_predict_records_its_id_space_and_draws_a_legend(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    x = np.linspace(0, 255, 160)[None, :, None]                      # smooth: 4 classes as vertical bands
    rgb = np.broadcast_to(np.concatenate([x, x[:, ::-1], x / 2], -1), (120, 160, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(frames / "00000000.png")
    for vspw_ids, want in ((False, "train"), (True, "vspw")):
        out = tmp_path / want
        predict.predict_source(_fake_predictor, str(frames), str(out), vspw_ids=vspw_ids)
        assert runner.read_id_space(str(out / "labels")) == want
    ids = _fake_predictor(rgb[None])[0]
    plain = predict.overlay(rgb, ids)
    drawn = cv2.cvtColor(cv2.imread(str(tmp_path / "train" / "overlay" / "00000000.jpg")), cv2.COLOR_BGR2RGB)
    legend = predict.draw_legend(plain, ids, vspw.CLASS_NAMES)
    counts = np.bincount(ids.ravel())
    order = [c for c in np.argsort(-counts, kind="stable") if counts[c]]
    row = max(8, 120 // 20)
    box = np.s_[: len(order) * row, :40]
    error = lambda a: np.abs(drawn[box].astype(int) - a[box]).mean()  # noqa: E731
    assert 3 * error(legend) < error(plain), (error(legend), error(plain))  # the written JPEG has the legend
    for k, c in enumerate(order):                                  # one swatch per class present, largest first
        np.testing.assert_array_equal(legend[k * row + row // 2, row // 2], vspw.PALETTE[c])
    assert (legend[len(order) * row:] == plain[len(order) * row:]).all()   # nothing drawn below the rows


# ------------------------------------------------------------------------------------------------ evaluation ids
def _predictions(root, out, raw_ids=False, top_class=False):
    """The val ground truth as predictions (ignored pixels -> class 1, a few pixels of class 2, 10% random
    classes 1..99 drawn per frame), as train ids or as raw VSPW ids (+1); `top_class` also paints class 123, whose
    raw id 124 only raw-id folders can hold. Never class 0, so raw-id folders hold neither 0 nor 124."""
    for video in vspw.read_split(root, "val"):
        for t, name in enumerate(vspw.mask_names(root, video)):
            ids = vspw.raw_to_train_ids(np.asarray(Image.open(vspw.mask_path(root, video, name))))
            ids = np.where(ids == 255, 1, ids)
            ids[:2, :3] = 2
            rng = np.random.default_rng(t)
            wrong = rng.random(ids.shape) < 0.1
            ids[wrong] = rng.integers(1, 100, wrong.sum())
            if top_class:
                ids[-1, -1] = vspw.NUM_CLASSES - 1
            runner.write_prediction(os.path.join(out, video, name + ".png"), ids, vspw_ids=raw_ids)


@pytest.fixture(scope="module")
def train_id_scores(tree, tmp_path_factory):
    pred = str(tmp_path_factory.mktemp("pred") / "train")
    _predictions(tree, pred)
    return runner.score_prediction_dir(pred, tree, "val", ids="train")


def test_raw_id_predictions_without_a_word_are_refused_as_ambiguous(tree, tmp_path, train_id_scores):
    pred = str(tmp_path / "raw")
    _predictions(tree, pred, raw_ids=True)                  # values 1..k: valid as train ids and as raw ids
    with pytest.raises(ValueError, match="neither 0 nor 124, so their ids are ambiguous: pass --pred-ids"):
        evaluate.main(["--predictions", pred, "--data-root", tree, "--split", "val"])
    scores = runner.score_prediction_dir(pred, tree, "val", ids="vspw")
    assert scores["miou"] == train_id_scores["miou"] and scores["prediction_ids"] == "vspw"
    assert train_id_scores["miou"] > 0.5


def test_the_id_space_comes_from_label_ids_json_or_from_the_values(tree, tmp_path, train_id_scores):
    pred = str(tmp_path / "raw")
    _predictions(tree, pred, raw_ids=True)
    runner.write_id_space(pred, "vspw")
    assert runner.score_prediction_dir(pred, tree, "val")["miou"] == train_id_scores["miou"]
    with pytest.raises(ValueError, match="--pred-ids train but .*label_ids.json says these predictions hold 'vspw'"):
        runner.score_prediction_dir(pred, tree, "val", ids="train")
    video = vspw.read_split(tree, "val")[0]
    runner.write_id_space(os.path.join(pred, video), "train")
    with pytest.raises(ValueError, match="prediction folders disagree on their ids"):
        runner.score_prediction_dir(pred, tree, "val")
    top = str(tmp_path / "top")                             # no label_ids.json, but a 124: only raw ids hold it
    _predictions(tree, top, raw_ids=True, top_class=True)
    assert runner.score_prediction_dir(top, tree, "val")["prediction_ids"] == "vspw"
    with pytest.raises(ValueError, match="value 124: .*train ids 0..123.*pass --pred-ids vspw"):
        runner.score_prediction_dir(top, tree, "val", ids="train")


def test_reading_a_video_of_mixed_frame_sizes_names_the_frame():
    """Builds made before the build refused mixed sizes: evaluation / pseudo-labelling name the frame."""
    def record(name, size):
        ok, jpeg = cv2.imencode(".jpg", np.zeros((*size, 3), np.uint8))
        return {"image": jpeg.tobytes(), "frame_name": name.encode(), "video": b"7_clip"}

    recs = [record("00000001", SIZE), record("00000002", (SIZE[0], SIZE[1] + 4))]
    assert records.stack_video_frames(recs[:1]).shape == (1, *SIZE, 3)
    with pytest.raises(ValueError, match=r"frame 00000002 of video 7_clip \(split 'val'\) is 52x32 but .* 48x32"):
        records.stack_video_frames(recs, "val")
    with pytest.raises(ValueError, match="could not decode the JPEG of frame 00000003 of video 7_clip"):
        records.stack_video_frames([dict(recs[0], image=b"garbage", frame_name=b"00000003")])


def test_the_score_table_lists_every_class_marking_absent_ones(tree, train_id_scores):
    table = metrics.format_table(train_id_scores).splitlines()
    rows = {line.split()[1]: line for line in table if line[:4].strip().isdigit()}
    assert list(rows) == [n[:24] for n in vspw.CLASS_NAMES]
    gt = train_id_scores["gt_pixels"]
    assert [("absent" in rows[n[:24]]) for n in vspw.CLASS_NAMES] == [g == 0 for g in gt]
    assert "absent (predicted on" in rows["door"] and gt[2] == 0         # the fake predictions paint class 2
    assert table[-1].startswith(f"{sum(g > 0 for g in gt)} of 124 classes are in the ground truth")


def test_scoring_unpadded_names_keeps_video_order(tree, tmp_path, train_id_scores):
    """VC (temporal consistency) depends on frame order: unpadded mask / prediction names score as padded ones."""
    root, pred = str(tmp_path / "raw"), str(tmp_path / "pred")
    shutil.copytree(tree, root)
    _predictions(tree, pred)
    for video in vspw.read_split(root, "val"):
        for k, name in enumerate(vspw.frame_names(root, video)):
            _rename_frame(root, video, name, str(8 + k))
            os.rename(os.path.join(pred, video, name + ".png"), os.path.join(pred, video, f"{8 + k}.png"))
    scores = runner.score_prediction_dir(pred, root, "val", ids="train")
    assert scores["vc8"] is not None
    for key in ("miou", "vc8"):
        assert scores[key] == train_id_scores[key], key
