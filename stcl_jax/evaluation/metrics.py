"""VSPW benchmark metrics, computed exactly as the official VSPW evaluation scripts compute them.

Sources: VSPW-dataset/VSPW_code `evaluator_test.py` (mIoU), `VC_perclip.py` (VC_n) and the `Evaluator` class
they use (also copied into CFFM / MRCFA / TV3S).

Labels: masks store raw values 0 = "others", 1..124 = classes, 255 = void. Scores use train ids 0..123
(raw k -> k-1; "others" and void -> IGNORE_INDEX), see `stcl_jax.data.datasets.vspw.raw_to_train_ids`.

Confusion-matrix scores (one 124 x 124 matrix over every labelled frame of the split, ground truth = rows;
pixels whose ground truth is ignored are not counted):
  IoU_c   = TP_c / (row_c + col_c - TP_c)
  mIoU    = mean of IoU_c over the classes with row_c > 0. A class absent from the ground truth is left out
            even if it is predicted (the `Evaluator` divides by `isval.sum()`, isval = row > 0).
  WIoU    = sum over classes with row_c > 0 of (row_c / total) * IoU_c   (frequency-weighted IoU).
  pixel accuracy = trace / total;  mean class accuracy = mean over classes with row_c > 0 of TP_c / row_c.

Video consistency VC_n (n = 8, 16), as `VC_perclip.py`:
  for a video of F labelled frames with F > n, for every window start i = 0 .. F-n-1, let G = pixels whose
  ground-truth value is identical across frames i .. i+n-1 and P = pixels whose prediction is identical across
  them; the window scores |G & P| / |G|. VC_n is the mean over all windows of all videos pooled together (not a
  mean of per-video means); windows with |G| = 0 (0/0) are skipped, as `np.nanmean` does.
  Where this differs from the intuitive definition:
  - the window count is F-n, not F-n+1: the last possible window (starting at F-n) is never scored;
  - the ground truth is compared as stored (raw values, void and "others" included): a pixel that stays void
    for n frames counts in G, and one that changes between "others" and void does not;
  - a prediction is "consistent" by value only, whether or not it is correct.
  CFFM, MRCFA and TV3S instead compare the *mapped* ground truth (0 and 255 both become 255) and skip videos
  with <= 16 frames for VC8 as well as VC16. `vc_protocol="cffm"` reproduces that, for comparison with their
  tables; `"vspw"` (the default) is the official benchmark.

The confusion matrix is accumulated on device: a jit-compiled bincount per device (`jax.shard_map` over all
local devices), each device keeping its own partial matrix, reduced once when the result is asked for (and
across processes with `multihost_utils.process_allgather`). VC windows are counted on device in fixed-size
chunks of windows, so neither metric recompiles per video length or loops over pixels in Python.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

NUM_CLASSES = 124
IGNORE_INDEX = 255
VC_WINDOWS = (8, 16)
VC_PROTOCOLS = ("vspw", "cffm")
_INT32_MAX = 2**31 - 1
_VC_CHUNK = 32  # windows counted per device call


# ----------------------------------------------------------------------------------------------- confusion matrix
def confusion_counts(labels, preds, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX):
    """Flattened confusion counts of one batch, jit-friendly: int32 (num_classes**2 + 1,).

    Entry `g * C + p` counts pixels with ground truth g and prediction p. Pixels whose label is `ignore_index`
    or outside [0, C) are not counted; the extra last entry counts pixels with a valid label but a prediction
    outside [0, C) (callers turn a nonzero value into an error instead of a silently skewed score).
    """
    labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
    preds = jnp.asarray(preds).reshape(-1).astype(jnp.int32)
    c = num_classes
    valid = (labels >= 0) & (labels < c) & (labels != ignore_index)
    pred_ok = (preds >= 0) & (preds < c)
    index = jnp.where(valid, jnp.where(pred_ok, labels * c + preds, c * c), c * c + 1)
    return jnp.bincount(index, length=c * c + 2)[: c * c + 1].astype(jnp.int32)


def confusion_matrix(labels, preds, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """int64 (C, C) confusion matrix (rows = ground truth) of one batch; raises on out-of-range predictions."""
    counts = np.asarray(jax.jit(confusion_counts, static_argnums=(2, 3))(labels, preds, num_classes, ignore_index))
    _check_no_bad_predictions(int(counts[-1]), "confusion_matrix", num_classes)
    return counts[:-1].astype(np.int64).reshape(num_classes, num_classes)


def _check_no_bad_predictions(bad: int, where: str, num_classes: int = NUM_CLASSES):
    if bad:
        raise ValueError(f"{where}: {bad} labelled pixels have a prediction outside 0..{num_classes - 1}")


class ConfusionAccumulator:
    """Confusion matrix accumulated on all local devices, one partial matrix per device, reduced once.

    `update(labels, preds)` takes (N, H, W) integer arrays (NumPy, or jax arrays already on device); N is padded
    to a multiple of the device count with ignored frames and the batch is split over devices along N. Partial
    matrices are int32 on device; before a device could overflow they are added into an int64 host total.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX, devices=None):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        devices = list(devices if devices is not None else jax.local_devices())
        self.mesh = Mesh(np.array(devices), ("data",))
        self.sharding = NamedSharding(self.mesh, P("data"))
        self._host = np.zeros(num_classes * num_classes + 1, np.int64)
        self._pixels_per_device = 0
        self._state = None

        def local_update(state, labels, preds):  # per device: state (1, C*C+1), labels/preds (n, H, W)
            return state + confusion_counts(labels, preds, num_classes, ignore_index)[None]

        spec = P("data")
        self._update = jax.jit(
            jax.shard_map(local_update, mesh=self.mesh, in_specs=(spec, spec, spec), out_specs=spec),
            donate_argnums=0,
        )

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def _zeros(self):
        zeros = np.zeros((self.num_devices, self.num_classes**2 + 1), np.int32)
        return jax.device_put(zeros, self.sharding)

    def update(self, labels, preds):
        if labels.shape != preds.shape or len(labels.shape) != 3:
            raise ValueError(f"labels and preds must both be (N, H, W); got {labels.shape} and {preds.shape}")
        n, h, w = labels.shape
        pad = -n % self.num_devices
        if pad:
            labels = np.concatenate([np.asarray(labels), np.full((pad, h, w), self.ignore_index, np.uint8)])
            preds = np.concatenate([np.asarray(preds), np.zeros((pad, h, w), np.asarray(preds).dtype)])
        pixels = (n + pad) // self.num_devices * h * w
        if self._state is not None and self._pixels_per_device + pixels > _INT32_MAX:
            self._flush()
        if self._state is None:
            self._state, self._pixels_per_device = self._zeros(), 0
        labels = jax.device_put(labels, self.sharding)
        preds = jax.device_put(preds, self.sharding)
        self._state = self._update(self._state, labels, preds)
        self._pixels_per_device += pixels

    def _flush(self):
        if self._state is not None:
            self._host += np.asarray(self._state).astype(np.int64).sum(axis=0)
            self._state = None

    def counts(self) -> tuple[np.ndarray, int]:
        """(int64 (C, C) confusion matrix of this process, number of labelled pixels with a bad prediction)."""
        self._flush()
        c = self.num_classes
        return self._host[:-1].reshape(c, c).copy(), int(self._host[-1])


# ----------------------------------------------------------------------------------------------- scores
def scores_from_confusion(cm: np.ndarray) -> dict:
    """The official scores of an int (C, C) confusion matrix (rows = ground truth); see the module docstring.

    Returns floats `miou`, `wiou`, `pixel_acc`, `mean_class_acc` and per-class lists `iou`, `class_acc`
    (None where the class has no ground-truth pixels) and `gt_pixels`, `pred_pixels`.
    """
    cm = np.asarray(cm, np.float64)
    tp, rows, cols = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    total = cm.sum()
    present = rows > 0
    if not present.any():
        raise ValueError("the ground truth has no labelled pixel: nothing to score")
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / (rows + cols - tp), np.nan)
        class_acc = np.where(present, tp / rows, np.nan)
    return {
        "miou": float(iou[present].mean()),
        "wiou": float((rows[present] / total * iou[present]).sum()),
        "pixel_acc": float(tp.sum() / total),
        "mean_class_acc": float(class_acc[present].mean()),
        "iou": [float(v) if p else None for v, p in zip(iou, present)],
        "class_acc": [float(v) if p else None for v, p in zip(class_acc, present)],
        "gt_pixels": [int(v) for v in rows],
        "pred_pixels": [int(v) for v in cols],
    }


# ----------------------------------------------------------------------------------------------- video consistency
def _sliding_all(x, k: int, length: int):
    """r[t] = all(x[t : t + k]) for t < length (x bool (length + k - 1, ...)), by binary lifting: log2(k) ANDs."""
    tables, width = [x], 1
    while 2 * width <= k:
        tables.append(tables[-1][:-width] & tables[-1][width:])
        width *= 2
    result, offset = None, 0
    for j in reversed(range(len(tables))):
        if k & (1 << j):
            piece = tables[j][offset : offset + length]
            result = piece if result is None else result & piece
            offset += 1 << j
    return result


@functools.partial(jax.jit, static_argnames=("windows", "length"))
def _window_counts(gt, pred, windows: tuple, length: int):
    """Frames (length + max(windows) - 1, H, W) of one video -> {n: (|G & P|, |G|) int32 (length,)} for the
    windows starting at frames 0 .. length-1. A window is identical iff every consecutive pair in it is equal,
    so G & P over a window is the AND over it of (gt equal & pred equal) between consecutive frames."""
    g_eq = gt[1:] == gt[:-1]
    both_eq = g_eq & (pred[1:] == pred[:-1])
    out = {}
    for n in windows:
        g_same = _sliding_all(g_eq, n - 1, length)
        both = _sliding_all(both_eq, n - 1, length)
        out[n] = (both.sum(axis=(1, 2), dtype=jnp.int32), g_same.sum(axis=(1, 2), dtype=jnp.int32))
    return out


def video_window_counts(gt: np.ndarray, pred: np.ndarray, n: int | Sequence[int]):
    """VC_n window counts of one video: int64 arrays (F-n,) of |G & P| and |G| (empty when F <= n).

    `gt` and `pred` are (F, H, W) integer arrays; the official protocol passes the raw masks as `gt`. With a
    sequence of n, returns {n: (both, same)} from one pass. Windows are counted on device in chunks of a fixed
    number of windows, so shapes depend only on (H, W, n), not on the video's length.
    """
    windows = tuple(n) if isinstance(n, (tuple, list)) else (n,)
    if min(windows) < 2:
        raise ValueError(f"VC window lengths must be >= 2, got {windows}")
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"gt and pred must both be (F, H, W); got {gt.shape} and {pred.shape}")
    counts = {k: gt.shape[0] - k for k in windows}  # the official script's range(len(frames) - n)
    parts = {k: ([], []) for k in windows}
    span = _VC_CHUNK + max(windows) - 1
    for start in range(0, max(counts.values()), _VC_CHUNK):
        frames = np.arange(start, start + span).clip(max=gt.shape[0] - 1)  # pad by repeating the last frame
        result = _window_counts(gt[frames], pred[frames], windows, _VC_CHUNK)
        for k, (b, s) in result.items():
            take = max(0, min(_VC_CHUNK, counts[k] - start))
            parts[k][0].append(np.asarray(b)[:take])
            parts[k][1].append(np.asarray(s)[:take])
    out = {k: (_cat(b).astype(np.int64), _cat(s).astype(np.int64)) for k, (b, s) in parts.items()}
    return out if isinstance(n, (tuple, list)) else out[n]


def vc_score(both: np.ndarray, same: np.ndarray) -> float | None:
    """Pooled VC over windows: mean of both/same, skipping windows with same == 0 (official np.nanmean)."""
    both, same = np.asarray(both, np.float64), np.asarray(same, np.float64)
    keep = same > 0
    return float((both[keep] / same[keep]).mean()) if keep.any() else None


# ----------------------------------------------------------------------------------------------- evaluator
def _lookup_raw_to_train(num_classes: int = NUM_CLASSES):
    """Raw mask -> train ids for a dataset of `num_classes` classes (raw k -> k - 1; 0, 255 -> ignore); raises
    on values that are not a class of it. The data modules own the label conventions."""
    from stcl_jax.data import label_space
    from stcl_jax.data.datasets import vspw

    if num_classes == vspw.NUM_CLASSES:
        return vspw.raw_to_train_ids
    lut, valid = label_space.raw_lut(num_classes), label_space.valid_raw_values(num_classes)

    def raw_to_train_ids(mask):
        return label_space.apply_raw_lut(mask, lut, valid, "ground truth")

    return raw_to_train_ids


@dataclasses.dataclass
class _VCState:
    both: list = dataclasses.field(default_factory=list)
    same: list = dataclasses.field(default_factory=list)
    videos: int = 0


class VSPWEvaluator:
    """Streams videos and returns the VSPW scores: mIoU, WIoU, pixel/class accuracy, VC_n, per-class IoU.

    `add_video(name, raw_masks, preds)`: raw masks as stored (F, H, W) uint8 (0 others, 1..124, 255 void) and
    predictions (F, H, W) train ids 0..123. `result()` reduces everything once (over devices and processes).
    """

    def __init__(self, num_classes: int = NUM_CLASSES, windows: Sequence[int] = VC_WINDOWS,
                 vc_protocol: str = "vspw", devices=None, frames_per_update: int | None = None):
        if vc_protocol not in VC_PROTOCOLS:
            raise ValueError(f"vc_protocol must be one of {VC_PROTOCOLS}, got {vc_protocol!r}")
        self.num_classes, self.windows, self.vc_protocol = num_classes, tuple(windows), vc_protocol
        self.confusion = ConfusionAccumulator(num_classes, IGNORE_INDEX, devices)
        self.frames_per_update = frames_per_update or 4 * self.confusion.num_devices
        self._vc = {n: _VCState() for n in self.windows}
        self._raw_to_train = _lookup_raw_to_train(num_classes)
        self.num_videos = self.num_frames = 0

    def add_video(self, name: str, raw_masks: np.ndarray, preds: np.ndarray):
        raw_masks, preds = np.asarray(raw_masks), np.asarray(preds)
        if raw_masks.ndim != 3 or raw_masks.shape != preds.shape:
            raise ValueError(f"video {name}: masks {raw_masks.shape} and predictions {preds.shape} must both be "
                             "(F, H, W) with the same shape")
        if preds.size and (preds.min() < 0 or preds.max() >= self.num_classes):
            raise ValueError(f"video {name}: prediction values must be 0..{self.num_classes - 1}, "
                             f"got {preds.min()}..{preds.max()}")
        labels = self._raw_to_train(raw_masks)
        for s in range(0, len(labels), self.frames_per_update):
            self.confusion.update(labels[s : s + self.frames_per_update], preds[s : s + self.frames_per_update])
        vc_gt = raw_masks if self.vc_protocol == "vspw" else labels
        min_frames = max(self.windows) if self.vc_protocol == "cffm" else 0
        scored = tuple(n for n in self.windows if len(labels) > max(n, min_frames))
        counts = video_window_counts(vc_gt, preds, scored) if scored else {}
        for n, (both, same) in counts.items():
            state = self._vc[n]
            state.both.append(both)
            state.same.append(same)
            state.videos += 1
        self.num_videos += 1
        self.num_frames += len(labels)

    def result(self) -> dict:
        """Scores over everything added on every process (collective when jax.process_count() > 1)."""
        cm, bad = self.confusion.counts()
        _check_no_bad_predictions(bad, "VSPWEvaluator", self.num_classes)
        counts = np.array([self.num_videos, self.num_frames], np.int64)
        vc = {n: (_cat(s.both), _cat(s.same), s.videos) for n, s in self._vc.items()}
        if jax.process_count() > 1:
            cm = _allgather_int64(cm).sum(axis=0)
            counts = _allgather_int64(counts).sum(axis=0)
            vc = {n: (_allgather_concat(b), _allgather_concat(s), int(_allgather_int64(np.array([v])).sum()))
                  for n, (b, s, v) in vc.items()}
        out = scores_from_confusion(cm)
        out.update(num_videos=int(counts[0]), num_frames=int(counts[1]), vc_protocol=self.vc_protocol)
        for n, (both, same, videos) in vc.items():
            out[f"vc{n}"] = vc_score(both, same)
            out[f"vc{n}_windows"] = int((same > 0).sum())
            out[f"vc{n}_videos"] = videos
        out["confusion_matrix"] = cm
        return out


def _cat(parts: list) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------- multi-process
def _allgather_int64(x: np.ndarray) -> np.ndarray:
    """process_allgather of a non-negative int64 array, exact without jax_enable_x64 (sent as two int32 halves)."""
    from jax.experimental import multihost_utils

    x = np.asarray(x, np.int64)
    hi, lo = (x >> 31).astype(np.int32), (x & _INT32_MAX).astype(np.int32)
    hi, lo = (np.asarray(multihost_utils.process_allgather(v)).astype(np.int64) for v in (hi, lo))
    return (hi << 31) | lo


def _allgather_concat(x: np.ndarray) -> np.ndarray:
    """Concatenation over processes of 1-d int64 arrays of different lengths."""
    lengths = _allgather_int64(np.array([len(x)]))[:, 0]
    padded = np.zeros(int(lengths.max()), np.int64)
    padded[: len(x)] = x
    gathered = _allgather_int64(padded)
    return np.concatenate([row[:k] for row, k in zip(gathered, lengths)])


# ----------------------------------------------------------------------------------------------- reporting
def format_table(result: dict, class_names: Sequence[str] | None = None) -> str:
    """Human-readable summary and per-class table: every class, those without ground truth marked '-' and
    "absent" (with the pixels predicted as them, which no score counts)."""
    if class_names is None:
        from stcl_jax.data.datasets.vspw import CLASS_NAMES as class_names
    total = sum(result["gt_pixels"]) or 1
    pred_pixels = result.get("pred_pixels") or [0] * len(class_names)
    lines = [f"{'id':>4}  {'class':<24} {'IoU':>7} {'acc':>7} {'GT share':>9}"]
    for k, name in enumerate(class_names):
        iou, acc = result["iou"][k], result["class_acc"][k]
        fmt = lambda v: f"{100 * v:7.2f}" if v is not None else f"{'-':>7}"  # noqa: E731
        note = "" if result["gt_pixels"][k] else "  absent" + (f" (predicted on {pred_pixels[k]} px, not scored)"
                                                              if pred_pixels[k] else "")
        lines.append(f"{k:>4}  {name[:24]:<24} {fmt(iou)} {fmt(acc)} {100 * result['gt_pixels'][k] / total:8.3f}%"
                     f"{note}")
    present = sum(1 for n in result["gt_pixels"] if n)
    lines.append(f"{present} of {len(class_names)} classes are in the ground truth; mIoU and mean acc average those")
    summary = ["  ".join(f"{key}={_pct(result.get(key))}" for key in
                         ("miou", "wiou", "pixel_acc", "mean_class_acc", *(f"vc{n}" for n in VC_WINDOWS))
                         if key in result)]
    summary.append(f"videos={result.get('num_videos')} frames={result.get('num_frames')} "
                   f"vc_protocol={result.get('vc_protocol')}")
    return "\n".join(summary + lines)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def json_ready(result: dict) -> dict:
    """The result without the confusion matrix array, as JSON-serialisable values (the matrix as nested lists)."""
    out = {k: v for k, v in result.items() if k != "confusion_matrix"}
    if "confusion_matrix" in result:
        out["confusion_matrix"] = np.asarray(result["confusion_matrix"]).tolist()
    return out
