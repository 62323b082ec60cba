"""stcl_jax.data.datasets.vspw: label encoding, names, palette, layout helpers."""

import numpy as np
import pytest

from stcl_jax.data.datasets import vspw


def test_names_and_palette():
    assert len(vspw.CLASS_NAMES) == vspw.NUM_CLASSES == 124
    assert len(set(vspw.CLASS_NAMES)) == 124
    assert vspw.CLASS_NAMES[0] == "wall" and vspw.CLASS_NAMES[60] == "person" and vspw.CLASS_NAMES[-1] == "train"
    assert vspw.PALETTE.shape == (124, 3) and vspw.PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in vspw.PALETTE}) == 124
    # VOC colour map: raw value 1 -> (128, 0, 0), raw 2 -> (0, 128, 0), raw 3 -> (128, 128, 0)
    np.testing.assert_array_equal(vspw.PALETTE[:3], [[128, 0, 0], [0, 128, 0], [128, 128, 0]])


def test_raw_train_id_mapping():
    raw = np.array([[0, 1, 2], [124, 255, 61]], np.uint8)
    ids = vspw.raw_to_train_ids(raw)
    np.testing.assert_array_equal(ids, [[255, 0, 1], [123, 255, 60]])
    assert ids.dtype == np.uint8
    np.testing.assert_array_equal(vspw.train_ids_to_raw(ids), [[255, 1, 2], [124, 255, 61]])
    every = np.arange(125, dtype=np.uint8)
    np.testing.assert_array_equal(vspw.train_ids_to_raw(vspw.raw_to_train_ids(every))[1:], every[1:])
    with pytest.raises(ValueError, match=r"\[125, 200\]"):
        vspw.raw_to_train_ids(np.array([1, 125, 200], np.uint8))
    with pytest.raises(ValueError, match="124"):
        vspw.train_ids_to_raw(np.array([124]))
    assert vspw.colorize(np.array([[0, 255]])).tolist() == [[[128, 0, 0], [0, 0, 0]]]


def test_layout_helpers(tmp_path):
    root = str(tmp_path)
    video = "12_ab_c_d"
    assert vspw.split_video_name(video) == ("12", "ab_c_d")
    with pytest.raises(ValueError):
        vspw.split_video_name("novideo")
    (tmp_path / "train.txt").write_text(f"{video}\n\n7_x\n")
    assert vspw.read_split(root, "train") == [video, "7_x"]
    with pytest.raises(FileNotFoundError, match="val.txt"):
        vspw.read_split(root, "val")
    (tmp_path / "test.txt").write_text("a_1\na_1\n")
    with pytest.raises(ValueError, match="twice"):
        vspw.read_split(root, "test")
    origin = tmp_path / "data" / video / "origin"
    origin.mkdir(parents=True)
    for name in ("00000150", "00000030", "00000090"):
        (origin / f"{name}.jpg").write_bytes(b"")
    assert vspw.frame_names(root, video) == ["00000030", "00000090", "00000150"]
    assert vspw.mask_names(root, video) is None
    assert vspw.frame_path(root, video, "00000030") == str(origin / "00000030.jpg")
    with pytest.raises(FileNotFoundError, match="7_x"):
        vspw.frame_names(root, "7_x")


def test_colorize_continues_the_palette_for_larger_label_sets():
    ids = np.arange(140, dtype=np.uint8)[None]
    colours = vspw.colorize(ids)[0]
    np.testing.assert_array_equal(colours[:vspw.NUM_CLASSES], vspw.PALETTE)
    assert len({tuple(c) for c in colours}) == 140 and colours[124:].any(axis=1).all()
