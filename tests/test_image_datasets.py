"""ADE20K and COCO panoptic builds: every pixel's class against the synthetic writers' own truth, class-name
metadata, pixel counts, bad inputs (error naming the file / --skip-bad), the CLI, several datasets in one output
dir, and the training pipeline reading an ADE20K build."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from stcl_jax.configs.base import base_config
from stcl_jax.data import build, pipeline, records, synthetic
from stcl_jax.data.build import cli
from stcl_jax.data.datasets import ade20k, coco_panoptic, vspw

SIZE = (32, 48)
IMAGES = {"train": 6, "val": 2}


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _histogram(masks):
    return np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=256).tolist()


def _write_and_build(tmp, folder, write, dataset, seed, build_from=None):
    """Writes a synthetic dataset into tmp/folder and builds it from `build_from` (default: that folder)."""
    root = str(tmp / folder)
    truth = write(root, IMAGES, SIZE, seed=seed)
    out = str(tmp / "built")
    report = build.build_dataset(build_from or root, out, dataset=dataset, progress=False)
    return root, truth, out, report


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ade")      # built from the parent of ADEChallengeData2016: accepted too
    return _write_and_build(tmp, "ADEChallengeData2016", synthetic.write_synthetic_ade20k, "ade20k", 1,
                            build_from=str(tmp))


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return _write_and_build(tmp_path_factory.mktemp("coco"), "coco", synthetic.write_synthetic_coco_panoptic,
                            "coco-panoptic", 2)


def _check_records(out, truth, split, image_path):
    src = records.open_split(out, split)
    stems = sorted(truth[split])
    assert len(src) == len(stems)
    for i, stem in enumerate(stems):
        r = src[i]
        assert records.text(r["video"]) == records.text(r["frame_name"]) == stem
        assert (r["video_index"], r["video_start"], r["frame_index"], r["num_frames"]) == (i, i, 0, 1)
        assert r["has_label"] and (r["height"], r["width"]) == SIZE
        assert r["image"] == _read(image_path(stem))                          # JPEG bytes unchanged
        assert records.decode_image(r["image"]).shape == (*SIZE, 3)          # greyscale JPEGs read as RGB
        np.testing.assert_array_equal(records.decode_mask(r["mask"]), truth[split][stem])
    return src


def test_ade20k_build_keeps_every_pixel(ade):
    root, truth, out, report = ade
    assert report["skipped"] == [] and report["splits"] == {s: {"images": n} for s, n in IMAGES.items()}
    for split in IMAGES:
        src = _check_records(out, truth, split, lambda s: ade20k.image_path(root, split, s))
        for i in range(len(src)):                                            # mask = the annotation file
            assert src[i]["mask"] == _read(ade20k.annotation_path(root, split, records.text(src[i]["video"])))
        assert report["pixels"][split] == _histogram(truth[split].values())
    values = set(np.unique(np.stack(list(truth["train"].values()))).tolist())
    assert {0, ade20k.NUM_CLASSES} <= values                                 # "other" and the last class occur
    assert any(Image.open(ade20k.image_path(root, "train", s)).mode == "L" for s in truth["train"])
    assert records.dataset_name(out) == "ade20k"
    assert records.dataset_class_names(out) == list(ade20k.CLASS_NAMES)
    meta = tfds.builder_from_directory(records.resolve_dataset_dir(out)).info.metadata
    assert meta["class_names"] == list(ade20k.CLASS_NAMES)
    assert json.load(open(os.path.join(records.resolve_dataset_dir(out), "build_report.json"))) == report


def test_coco_panoptic_build_matches_the_writers_semantic_maps(coco):
    root, truth, out, report = coco
    assert report["skipped"] == []
    for split in IMAGES:
        _check_records(out, truth, split, lambda s: os.path.join(root, f"{split}2017", s + ".jpg"))
        assert report["pixels"][split] == _histogram(truth[split].values())
    # the truth holds crowd regions and unlabelled pixels (0) and the last category (raw 133)
    data = json.load(open(os.path.join(root, "annotations", "panoptic_train2017.json")))
    assert any(s["iscrowd"] for a in data["annotations"] for s in a["segments_info"])
    values = set(np.unique(np.stack(list(truth["train"].values()))).tolist())
    assert {0, 1, coco_panoptic.NUM_CLASSES} <= values
    # the JSON lists the categories shuffled: the build's class names follow the category ids
    assert [c["name"] for c in data["categories"]] != list(coco_panoptic.CLASS_NAMES)
    assert records.dataset_class_names(out) == list(coco_panoptic.CLASS_NAMES)
    assert records.dataset_name(out) == "coco_panoptic"


def test_vspw_build_reports_pixels_and_class_names(tmp_path):
    raw = str(tmp_path / "raw")
    synthetic.write_synthetic_vspw(raw, videos=3, frames=2, size=(16, 24), seed=4)
    report = build.build_dataset(raw, str(tmp_path / "out"), progress=False)
    for split in ("train", "val"):
        masks = [np.array(Image.open(vspw.mask_path(raw, v, f))) for v in vspw.read_split(raw, split)
                 for f in vspw.frame_names(raw, v)]
        assert report["pixels"][split] == _histogram(masks)
    out = str(tmp_path / "out")
    assert records.dataset_class_names(out) == list(vspw.CLASS_NAMES) and records.dataset_name(out) == "vspw"
    os.remove(os.path.join(records.resolve_dataset_dir(out), "metadata.json"))    # a build made before metadata
    assert records.dataset_class_names(out) == list(vspw.CLASS_NAMES)


def test_coco_categories_and_conversion_rules():
    assert [c[0] for c in coco_panoptic.CATEGORIES] == sorted({c[0] for c in coco_panoptic.CATEGORIES})
    assert coco_panoptic.CATEGORIES[0] == (1, "person", 1) and coco_panoptic.CATEGORIES[-1] == (200, "rug-merged", 0)
    with pytest.raises(ValueError, match="more than the 254"):
        coco_panoptic.category_raw_values([{"id": i} for i in range(1, 256)], "x.json")
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (1, 2, 3)                      # id 1 + 2 * 256 + 3 * 65536
    rgb[1, :] = (7, 0, 0)                      # crowd
    segs = [{"id": 1 + 2 * 256 + 3 * 65536, "category_id": 9}, {"id": 7, "category_id": 9, "iscrowd": 1}]
    np.testing.assert_array_equal(coco_panoptic.panoptic_to_semantic(rgb, segs, {9: 5}), [[5, 0, 0], [0, 0, 0]])


# ----------------------------------------------------------------------------------------------- bad inputs
def _ade_drop_mask(root, stem):
    os.remove(ade20k.annotation_path(root, "train", stem))
    return ade20k.image_path(root, "train", stem)


def _ade_mask_size(root, stem):
    p = ade20k.annotation_path(root, "train", stem)
    Image.fromarray(np.ones((SIZE[0] + 2, SIZE[1]), np.uint8)).save(p)
    return p


def _ade_corrupt_jpeg(root, stem):
    p = ade20k.image_path(root, "train", stem)
    data = _read(p)
    open(p, "wb").write(data[: len(data) // 2])
    return p


def _ade_bad_value(root, stem):
    p = ade20k.annotation_path(root, "train", stem)
    m = np.array(Image.open(p))
    m[0, 0] = 151
    Image.fromarray(m).save(p)
    return p


def _json_path(root):
    return os.path.join(root, "annotations", "panoptic_train2017.json")


def _edit_annotation(root, stem, edit):
    data = json.load(open(_json_path(root)))
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == stem + ".jpg")
    edit(data, next(a for a in data["annotations"] if a["image_id"] == image_id))
    json.dump(data, open(_json_path(root), "w"))


def _png(root, stem):
    return os.path.join(root, "annotations", "panoptic_train2017", stem + ".png")


def _coco_missing_segment(root, stem):
    _edit_annotation(root, stem, lambda data, a: a["segments_info"].pop(0))
    return _png(root, stem)


def _coco_unknown_category(root, stem):
    _edit_annotation(root, stem, lambda data, a: a["segments_info"][0].update(category_id=12345))
    return _png(root, stem)


def _coco_no_annotation(root, stem):
    _edit_annotation(root, stem, lambda data, a: data["annotations"].remove(a))
    return os.path.join(root, "train2017", stem + ".jpg")


def _coco_mask_size(root, stem):
    p = _png(root, stem)
    Image.fromarray(np.zeros((SIZE[0], SIZE[1] + 2, 3), np.uint8)).save(p)
    return p


def _coco_corrupt_jpeg(root, stem):
    p = os.path.join(root, "train2017", stem + ".jpg")
    open(p, "wb").write(_read(p)[:100])
    return p


BAD = {
    "ade20k image without annotation": ("ade20k", _ade_drop_mask, "image has no annotation"),
    "ade20k mask size": ("ade20k", _ade_mask_size, "differs from its frame"),
    "ade20k corrupt jpeg": ("ade20k", _ade_corrupt_jpeg, "corrupt"),
    "ade20k label value": ("ade20k", _ade_bad_value, r"\[151\]"),
    "coco segment missing from the json": ("coco-panoptic", _coco_missing_segment, "not in the image's segments"),
    "coco unknown category": ("coco-panoptic", _coco_unknown_category, "12345"),
    "coco image without annotation": ("coco-panoptic", _coco_no_annotation, "no annotation"),
    "coco mask size": ("coco-panoptic", _coco_mask_size, "differs from its image"),
    "coco corrupt jpeg": ("coco-panoptic", _coco_corrupt_jpeg, "corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_file_and_skip_bad_leaves_it_out(ade, coco, tmp_path, case):
    dataset, make_bad, message = BAD[case]
    src_root, truth = (ade if dataset == "ade20k" else coco)[:2]
    root = str(tmp_path / "raw")
    shutil.copytree(src_root, root)
    stem = sorted(truth["train"])[2]
    path = make_bad(root, stem)
    with pytest.raises(build.BadInputError, match=message) as err:
        build.build_dataset(root, str(tmp_path / "strict"), splits=("train",), dataset=dataset, progress=False)
    assert path in str(err.value)
    with pytest.raises(FileNotFoundError, match="no complete"):
        records.resolve_dataset_dir(str(tmp_path / "strict"))
    out = str(tmp_path / "skip")
    report = build.build_dataset(root, out, splits=("train",), dataset=dataset, skip_bad=True, progress=False)
    assert [b["path"] for b in report["skipped"]] == [path]
    src = records.open_split(out, "train")
    kept = [records.text(src[i]["video"]) for i in range(len(src))]
    assert kept == [s for s in sorted(truth["train"]) if s != stem]
    assert [int(src[i]["video_start"]) for i in range(len(src))] == list(range(len(src)))


def test_ade20k_file_listing(ade, tmp_path):
    """.JPG / .jpeg images are images; any other file, or a second file of one name, is reported, never dropped."""
    src_root, truth = ade[:2]
    root = str(tmp_path / "raw")
    shutil.copytree(src_root, root)
    stems = sorted(truth["train"])
    folder = ade20k.image_dir(root, "train")
    os.rename(ade20k.image_path(root, "train", stems[1]), os.path.join(folder, stems[1] + ".JPG"))
    os.rename(ade20k.image_path(root, "train", stems[2]), os.path.join(folder, stems[2] + ".jpeg"))
    out = str(tmp_path / "ok")
    assert build.build_dataset(root, out, splits=("train",), dataset="ade20k", progress=False)["skipped"] == []
    src = records.open_split(out, "train")
    assert [records.text(src[i]["video"]) for i in range(len(src))] == stems
    assert src[2]["image"] == _read(os.path.join(folder, stems[2] + ".jpeg"))
    stray = os.path.join(folder, "notes.txt")
    open(stray, "w").write("not an image")
    with pytest.raises(build.BadInputError, match=f"{stray}: not an .jpg/.jpeg file"):
        build.build_dataset(root, str(tmp_path / "strict"), splits=("train",), dataset="ade20k", progress=False)
    report = build.build_dataset(root, str(tmp_path / "skip"), splits=("train",), dataset="ade20k", skip_bad=True,
                                 progress=False)
    assert [b["path"] for b in report["skipped"]] == [stray] and report["splits"]["train"]["images"] == len(stems)
    os.remove(stray)
    second = os.path.join(folder, stems[1] + ".jpg")
    shutil.copy(os.path.join(folder, stems[1] + ".JPG"), second)
    with pytest.raises(build.BadInputError, match="a second file named") as err:
        build.build_dataset(root, str(tmp_path / "twice"), splits=("train",), dataset="ade20k", progress=False)
    assert stems[1] + ".JPG" in str(err.value) and second in str(err.value)


@pytest.mark.parametrize("twice", ["annotation", "image"])
def test_coco_json_listing_an_image_twice_is_refused(coco, tmp_path, twice):
    root = str(tmp_path / "raw")
    shutil.copytree(coco[0], root)
    data = json.load(open(_json_path(root)))
    if twice == "image":                     # a second entry of the same file, under another id
        data["images"].append(dict(data["images"][0], id=10 ** 6))
    else:
        data["annotations"].append(dict(data["annotations"][0]))
    json.dump(data, open(_json_path(root), "w"))
    what = "images named" if twice == "image" else "annotations of image id"
    with pytest.raises(ValueError, match=f"{_json_path(root)}: two {what}"):
        build.build_dataset(root, str(tmp_path / "out"), splits=("train",), dataset="coco-panoptic", progress=False)


# ------------------------------------------------------------------------------------ CLI, several datasets
def test_cli_dataset_flag_default_vspw_and_several_datasets_in_one_dir(ade, coco, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(ade[2], out)                                            # an ADE20K build is already there
    coco_root = str(tmp_path / "coco_d2")
    truth = synthetic.write_synthetic_coco_panoptic(coco_root, {"val": 3}, SIZE, seed=5, png_folder="root")
    proc = subprocess.run([sys.executable, "-m", "stcl_jax.data.build", "--dataset", "coco-panoptic", "--data-root",
                           coco_root, "--output", out, "--splits", "val", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val: 3 images" in proc.stdout
    with pytest.raises(ValueError, match="several datasets") as err:
        records.resolve_dataset_dir(out)
    assert "ade20k" in str(err.value) and "coco_panoptic" in str(err.value)
    coco_dir = os.path.join(out, "coco_panoptic", "semantic", "1.0.0")
    assert records.resolve_dataset_dir(coco_dir) == coco_dir and records.dataset_name(coco_dir) == "coco_panoptic"
    ade_dir = os.path.join(out, "ade20k", "scene_parsing", "1.0.0")
    assert records.dataset_class_names(ade_dir) == list(ade20k.CLASS_NAMES)
    src = records.open_split(coco_dir, "val")
    for i, stem in enumerate(sorted(truth["val"])):
        np.testing.assert_array_equal(records.decode_mask(src[i]["mask"]), truth["val"][stem])
    # --dataset defaults to vspw; a root of the wrong layout says which layout was expected
    with pytest.raises(FileNotFoundError, match="VSPW_480p"):
        cli.main(["--data-root", ade[0], "--output", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016/images"):
        cli.main(["--dataset", "ade20k", "--data-root", coco_root, "--output", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
        build.build_dataset(ade[0], str(tmp_path / "x"), dataset="coco-panoptic")


def test_train_loader_reads_an_ade20k_build(ade):
    root, truth, out, _ = ade
    c = base_config().data
    c.dir, c.num_frames, c.base_size, c.crop_size, c.scale_range = out, 1, SIZE, SIZE, (1.0, 1.0)
    c.flip_prob, c.photometric, c.cat_max_ratio, c.worker_count, c.read_threads = 0.0, False, 1.0, 0, 1
    it = pipeline.make_train_loader(c, seed=0, batch_size_per_host=4, with_indices=True)
    stems = sorted(truth["train"])
    seen = set()
    for _ in range(3):
        batch = next(it)
        assert batch["label"].shape == (4, 1, *SIZE)
        for label, index in zip(batch["label"], batch["index"]):
            raw = truth["train"][stems[int(index[0])]].astype(np.int64)
            np.testing.assert_array_equal(label[0], np.where(raw == 0, 255, raw - 1))
            seen.add(int(index[0]))
    assert len(seen) == len(stems)
