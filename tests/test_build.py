"""stcl_jax.data.build: exact round trip, record index, bad inputs, interrupted builds, extra frames, CLI."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from stcl_jax.data import build, records, synthetic
from stcl_jax.data.datasets import vspw

SIZE = (32, 48)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vspw"))
    synthetic.write_synthetic_vspw(root, videos=4, frames=5, size=SIZE, seed=2)
    return root


@pytest.fixture()
def raw_copy(raw_root, tmp_path):
    root = str(tmp_path / "raw")
    shutil.copytree(raw_root, root)
    return root


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_round_trip_exact_bytes_labels_and_index(raw_root, tmp_path):
    out = str(tmp_path / "built")
    report = build.build_dataset(raw_root, out, splits=("train", "val", "test"), progress=False)
    assert report["skipped"] == []
    for split in vspw.SPLITS:
        videos = vspw.read_split(raw_root, split)
        src = records.open_split(out, split)
        assert report["splits"][split] == {"videos": len(videos), "frames": 5 * len(videos)} == \
            {"videos": len(videos), "frames": len(src)}
        i = 0
        for vi, video in enumerate(videos):
            names = vspw.frame_names(raw_root, video)
            for t, name in enumerate(names):
                r = src[i]
                assert records.text(r["video"]) == video and records.text(r["frame_name"]) == name
                assert (r["video_index"], r["frame_index"], r["num_frames"], r["video_start"]) == (vi, t, 5, 5 * vi)
                assert (r["height"], r["width"]) == SIZE
                assert r["image"] == _read(vspw.frame_path(raw_root, video, name))       # JPEG bytes unchanged
                if split == "test":
                    assert not r["has_label"] and r["mask"] == b""
                else:
                    assert r["has_label"] and r["mask"] == _read(vspw.mask_path(raw_root, video, name))
                    np.testing.assert_array_equal(records.decode_mask(r["mask"]),
                                                  np.array(Image.open(vspw.mask_path(raw_root, video, name))))
                np.testing.assert_array_equal(records.decode_image(r["image"]),
                                              np.array(Image.open(vspw.frame_path(raw_root, video, name))))
                i += 1
    # iterate_videos gives whole videos in order, at the original size
    got = list(records.iterate_videos(out, "val"))
    assert [g[0] for g in got] == vspw.read_split(raw_root, "val")
    name, frames_, imgs, masks = got[0]
    assert frames_ == vspw.frame_names(raw_root, name) and imgs.shape == (5, *SIZE, 3) and masks.shape == (5, *SIZE)
    assert list(records.iterate_videos(out, "test"))[0][3] is None
    # per-process shares: video k goes to process k % count, together exactly the whole split
    shares = [[g[0] for g in records.iterate_videos(out, "val", process_index=p, process_count=2)] for p in (0, 1)]
    assert shares[0] == [g[0] for g in got][0::2] and shares[1] == [g[0] for g in got][1::2]
    # a second run sees the complete build and does nothing
    assert build.build_dataset(raw_root, out, splits=("train",), progress=False) == report


def _corrupt_jpeg(root, video, name):
    p = vspw.frame_path(root, video, name)
    data = _read(p)
    open(p, "wb").write(data[: len(data) // 2])
    return p


def _corrupt_png(root, video, name):
    p = vspw.mask_path(root, video, name)
    open(p, "wb").write(_read(p)[:40])
    return p


def _resize_mask(root, video, name):
    p = vspw.mask_path(root, video, name)
    Image.fromarray(np.ones((SIZE[0] + 2, SIZE[1]), np.uint8)).save(p)
    return p


def _bad_label(root, video, name):
    p = vspw.mask_path(root, video, name)
    m = np.array(Image.open(p))
    m[0, 0] = 200
    Image.fromarray(m).save(p)
    return p


def _drop_mask(root, video, name):
    p = vspw.mask_path(root, video, name)
    os.remove(p)
    return p


BAD_CASES = {"corrupt jpeg": (_corrupt_jpeg, "corrupt"), "corrupt png": (_corrupt_png, "corrupt"),
             "mask size": (_resize_mask, "differs from its frame"), "label value": (_bad_label, r"\[200\]"),
             "missing mask": (_drop_mask, "no mask in a labelled split")}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_errors_and_skip_report(raw_copy, tmp_path, case):
    make_bad, message = BAD_CASES[case]
    video = vspw.read_split(raw_copy, "train")[1]
    name = vspw.frame_names(raw_copy, video)[2]
    path = make_bad(raw_copy, video, name)
    out = str(tmp_path / "strict")
    with pytest.raises(build.BadInputError, match=message) as err:
        build.build_dataset(raw_copy, out, splits=("train",), progress=False)
    assert path in str(err.value)
    with pytest.raises(FileNotFoundError, match="no complete VSPW build"):
        records.resolve_dataset_dir(out)                    # the failed build left nothing that looks complete
    out = str(tmp_path / "skip")
    report = build.build_dataset(raw_copy, out, splits=("train",), skip_bad=True, progress=False)
    assert [b["path"] for b in report["skipped"]] == [path]
    assert json.load(open(os.path.join(out, "build_report.json")))["skipped"] == report["skipped"]
    src = records.open_split(out, "train")
    assert len(src) == 5 * 2 - 1
    kept = [records.text(src[i]["frame_name"]) for i in range(len(src)) if records.text(src[i]["video"]) == video]
    assert name not in kept and len(kept) == 4
    r = src[5 + 3]                                          # the video's frames are renumbered 0..3
    assert (r["frame_index"], r["num_frames"], r["video_start"]) == (3, 4, 5)


def test_missing_video_and_rerun_after_failure(raw_copy, tmp_path):
    with open(vspw.split_file(raw_copy, "val"), "a") as f:
        f.write("99_missingVideo\n")
    out = str(tmp_path / "out")
    # a leftover of a killed build must be ignored
    os.makedirs(os.path.join(out, "vspw", "480p", "incomplete.ABCDEF_1.0.0"))
    with pytest.raises(build.BadInputError, match="99_missingVideo"):
        build.build_dataset(raw_copy, out, splits=("train", "val"), progress=False)
    with pytest.raises(FileNotFoundError):
        records.resolve_dataset_dir(out)
    report = build.build_dataset(raw_copy, out, splits=("train", "val"), skip_bad=True, progress=False)
    assert len(report["skipped"]) == 1 and "99_missingVideo" in report["skipped"][0]["path"]
    assert len(records.open_split(out, "val")) == 5


def test_extra_frames_cli_with_workers(raw_root, tmp_path):
    """Extra (pseudo-labelled / unlabelled) videos become split 'extra'; the CLI runs with 2 worker processes."""
    extra = str(tmp_path / "extra")
    video = vspw.read_split(raw_root, "train")[0]
    shutil.copytree(vspw.video_dir(raw_root, video), vspw.video_dir(extra, "1_pseudo"))
    shutil.copytree(os.path.join(vspw.video_dir(raw_root, video), "origin"),
                    os.path.join(vspw.video_dir(extra, "2_unlabelled"), "origin"))
    os.remove(vspw.mask_path(extra, "1_pseudo", vspw.frame_names(extra, "1_pseudo")[0]))
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "stcl_jax.data.build", "--data-root", raw_root, "--output", out,
                           "--splits", "val", "--workers", "2", "--extra-frames", extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extra: 2 videos, 10 frames" in proc.stdout
    src = records.open_split(out, "extra")
    assert [bool(src[i]["has_label"]) for i in range(10)] == [False] + [True] * 4 + [False] * 5
    assert len(records.open_split(out, "val")) == 5
    with pytest.raises(ValueError, match="not in the build"):
        records.open_split(out, "train")
