"""stcl_jax.data.label_space and the label_map command: mapping files (parsing, errors naming file and line),
raw -> train id tables, and the shipped ADE20K / COCO panoptic -> VSPW maps."""

import numpy as np
import pytest

from stcl_jax.data import label_map, label_space
from stcl_jax.data.datasets import ade20k, coco_panoptic, vspw

COCO_NAMES = [name for _, name, _ in coco_panoptic.CATEGORIES]


def _write(tmp_path, text, name="map.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _parse_independently(path):
    """source name -> target name or None, read line by line without label_map (an independent reader)."""
    out = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if line:
            s, t = line.split("->")
            out[s.strip()] = None if t.strip() == "ignore" else t.strip()
    return out


@pytest.mark.parametrize("name,source", [("ade20k_to_vspw", list(ade20k.CLASS_NAMES)),
                                         ("coco_panoptic_to_vspw", COCO_NAMES)])
def test_shipped_maps_cover_every_source_class(name, source):
    lut = label_space.read_label_map(name, source, vspw.CLASS_NAMES)
    expected = _parse_independently(label_space.resolve_map_path(name))
    assert sorted(expected) == sorted(n.strip() for n in source)
    for i, n in enumerate(source):
        target = expected[n.strip()]
        assert lut[i] == (255 if target is None else vspw.CLASS_NAMES.index(target)), n
    assert (lut[len(source):] == 255).all()
    kept = int((lut[:len(source)] != 255).sum())
    assert kept == sum(t is not None for t in expected.values()) and kept > len(source) // 2


def test_small_map_is_applied_exactly(tmp_path):
    path = _write(tmp_path, "# a comment\nsky -> sky\n\nroad->road   # spaces optional\ncar -> ignore\n"
                            "person -> person\n")
    lut = label_space.read_label_map(path, ["road", "car", "sky", "person"], vspw.CLASS_NAMES)
    want = [vspw.CLASS_NAMES.index("road"), 255, vspw.CLASS_NAMES.index("sky"), vspw.CLASS_NAMES.index("person")]
    assert lut[:4].tolist() == want
    raw = label_space.compose_raw_lut(4, lut)
    mask = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)       # raw k = source class k - 1; 0 and 255 ignored
    assert raw[mask].tolist() == [[255, want[0], 255], [want[2], want[3], 255]]
    own = label_space.compose_raw_lut(4, None)
    assert own[mask].tolist() == [[255, 0, 1], [2, 3, 255]]


@pytest.mark.parametrize("text,message", [
    ("sky -> sky\nroad\n", r"map.txt:2: expected 'source class -> target class'"),
    ("sky -> sky\nroda -> road\n", r"map.txt:2: 'roda' is not a class of the source dataset"),
    ("sky -> skye\nroad -> road\n", r"map.txt:1: 'skye' is not a class of the target"),
    ("sky -> sky\nroad -> road\nsky -> ignore\n", r"map.txt:3: 'sky' is already mapped on line 1"),
    ("sky -> sky\n", r"map.txt: 1 source classes are not listed .*'road'"),
])
def test_bad_map_names_file_and_line(tmp_path, text, message):
    with pytest.raises(label_space.LabelMapError, match=message):
        label_space.read_label_map(_write(tmp_path, text), ["road", "sky"], vspw.CLASS_NAMES)


def test_unknown_map_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="ade20k_to_vspw, coco_panoptic_to_vspw"):
        label_space.resolve_map_path("ade_to_vspw")


def test_kept_pixels_and_raw_tables():
    lut = np.full(256, 255, np.uint8)
    lut[[0, 2]] = [5, 7]
    r = label_space.kept_pixels(lut, [10, 30, 60])
    assert (r["classes_kept"], r["pixels_kept"], r["pixels"]) == (2, 70.0, 100.0)
    assert r["share_kept"] == pytest.approx(0.7)
    assert label_space.raw_lut(3).tolist()[:5] == [255, 0, 1, 2, 255]
    assert np.flatnonzero(label_space.valid_raw_values(3)).tolist() == [0, 1, 2, 3, 255]


def test_cli_reports_the_map(capsys):
    label_map.main(["--map", "ade20k_to_vspw", "--source", "ade20k"])
    out = capsys.readouterr().out
    assert "121 of 150 source classes" in out
    assert "windowpane" in out and "-> window" in out


def test_apply_raw_lut_rejects_values_outside_the_dataset():
    lut, valid = label_space.raw_lut(3), label_space.valid_raw_values(3)
    mask = np.array([[0, 1, 3, 255]], np.uint8)
    assert label_space.apply_raw_lut(mask, lut, valid, "m").tolist() == [[255, 0, 2, 255]]
    with pytest.raises(ValueError, match=r"frame 7: mask values \[4, 9\] are neither a class \(1..3\)"):
        label_space.apply_raw_lut(np.array([[1, 4, 9]], np.uint8), lut, valid, "frame 7")
