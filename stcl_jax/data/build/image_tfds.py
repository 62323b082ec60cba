"""tensorflow-datasets builders of the image datasets ADE20K and COCO panoptic, in VSPW's record format.

Run them with `python -m stcl_jax.data.build --dataset {ade20k,coco-panoptic}`. Every image becomes one record, a
single-frame "video" (video = frame_name = the image file stem, video_index = video_start = the record index,
frame_index 0, num_frames 1), so the readers of VSPW builds read these unchanged. image = the JPEG bytes as on
disk; mask = PNG bytes of raw values (ADE20K: the annotation file as on disk; COCO: the semantic map converted
from the panoptic PNG, see `coco_panoptic`). ArrayRecord, no TensorFlow, records in file-name order.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds

from stcl_jax.data.build import image_scan
from stcl_jax.data.build.base import RecordBuilder, bad_input, empty_split, map_jobs
from stcl_jax.data.build.checks import Bad
from stcl_jax.data.datasets import ade20k, coco_panoptic
from stcl_jax.data.formats import ADE20K, COCO_PANOPTIC


class _ImageBuilder(RecordBuilder, skip_registration=True):
    """One record per image; subclasses list the jobs of a split and the function that scans one."""

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        return {split: self._generate_examples(split, *self._jobs(root, split)) for split in self._splits}

    def _jobs(self, root: str, split: str) -> tuple[object, list]:
        """(function scanning one job -> checks.Frame | checks.Bad, jobs in record order)."""
        raise NotImplementedError

    def _report_bad(self, split: str, bad: list[Bad]) -> None:
        """Bad inputs found while listing a split: the build stops, or with --skip-bad they are reported."""
        if bad and not self._skip_bad:
            raise bad_input(split, bad, "split")
        self.skipped.extend(bad)

    def _generate_examples(self, split: str, fn, jobs: list) -> Iterable:
        pixels = self.pixels.setdefault(split, np.zeros(256, np.int64))
        n, t0, bad_here = 0, time.time(), []
        for i, res in enumerate(map_jobs(fn, jobs, self._workers, chunksize=16)):
            if isinstance(res, Bad):
                if not self._skip_bad:
                    raise bad_input(split, [res], "image")
                self.skipped.append(res)
                bad_here.append(res)
                continue
            pixels += res.pixels
            yield f"{n:08d}", {
                "image": res.jpeg, "mask": res.png, "has_label": True, "video": res.name, "frame_name": res.name,
                "video_index": n, "frame_index": 0, "num_frames": 1, "video_start": n,
                "height": res.height, "width": res.width}
            n += 1
            if self._progress and (i + 1) % 2000 == 0:
                eta = (len(jobs) - i - 1) * (time.time() - t0) / (i + 1)
                print(f"[build] {split}: {i + 1}/{len(jobs)} images, {(i + 1) / (time.time() - t0):.0f} images/s, "
                      f"ETA {eta:.0f} s", flush=True)
        if not n:
            raise empty_split(split, bad_here, "image")
        self.counts[split] = {"images": n}


class Ade20k(_ImageBuilder):
    """ADE20K SceneParsing (MIT Scene Parsing Benchmark): 150 classes, 20,210 train / 2,000 val images."""

    name = ADE20K[0]
    VERSION = tfds.core.Version(ADE20K[2])
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=ADE20K[1], description="ADEChallengeData2016")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract ADEChallengeData2016.zip and pass that folder as manual_dir."
    CLASS_NAMES = ade20k.CLASS_NAMES
    HOMEPAGE = "http://sceneparsing.csail.mit.edu/"

    def _jobs(self, root, split):
        root = ade20k.resolve_root(root)
        (images, bad_images), (masks, bad_masks) = ade20k.image_files(root, split), ade20k.annotation_files(root, split)
        self._report_bad(split, [Bad(path, reason) for path, reason in bad_images + bad_masks])
        jobs = [(s, images.get(s), masks.get(s)) for s in sorted(set(images) | set(masks))]
        return image_scan.scan_ade20k, jobs


class CocoPanoptic(_ImageBuilder):
    """COCO panoptic 2017 as semantic segmentation: 133 classes (80 things + 53 stuff), 118K train / 5K val."""

    name = COCO_PANOPTIC[0]
    VERSION = tfds.core.Version(COCO_PANOPTIC[2])
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=COCO_PANOPTIC[1], description="panoptic 2017 -> semantic")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Extract train2017.zip, val2017.zip and panoptic_annotations_trainval2017.zip "
                                    "(and its inner panoptic_*2017.zip) into one folder; pass it as manual_dir.")
    CLASS_NAMES = coco_panoptic.CLASS_NAMES
    HOMEPAGE = "https://cocodataset.org/#panoptic-2017"
    _json_names: list[str] | None = None

    def _jobs(self, root, split):
        layout = coco_panoptic.find_layout(root, split)
        ann = coco_panoptic.load_annotations(layout.json)
        if self._json_names is None:      # the build's classes: those of the (first split's) JSON
            self._json_names = self.info.metadata["class_names"] = ann["class_names"]
        elif ann["class_names"] != self._json_names:
            raise ValueError(f"{layout.json}: its categories differ from those of the other split's JSON")
        jobs, used = [], set()
        for im in ann["images"]:
            a = ann["annotations"].get(int(im["id"]))
            png = os.path.join(layout.png_dir, a["file_name"]) if a else None
            used.add(int(im["id"]))
            jobs.append((os.path.splitext(im["file_name"])[0], os.path.join(layout.image_dir, im["file_name"]),
                         png, (int(im["height"]), int(im["width"])), a["segments_info"] if a else []))
        orphans = sorted(set(ann["annotations"]) - used)   # annotations whose image the JSON does not list
        self._report_bad(split, [Bad(os.path.join(layout.png_dir, ann["annotations"][i]["file_name"]),
                                          f"annotation of image id {i}, which is not in {layout.json}'s images")
                                 for i in orphans])
        return functools.partial(image_scan.scan_coco_panoptic, raw=ann["raw"]), jobs
