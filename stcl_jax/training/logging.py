"""What a person sees during training: a progress line, TensorBoard event files and a JSONL log.

`MetricWriter` writes scalars to `workdir/tensorboard/` (tensorboardX) and `workdir/metrics.jsonl` (one JSON
object per logged step) from process 0 only; a resume from step N first drops the rows after N (steps that will be
replayed) and tells TensorBoard to purge them too. `log_file` copies the stcl_jax lines to `workdir/train.log`.
`Progress` turns step times into img/s and an ETA. `check_finite` stops the run with the step number, the
non-finite metrics and the last good checkpoint when any metric or the updated state is NaN or inf.
"""

import contextlib
import json
import logging
import math
import os
import time

import jax

from stcl_jax import workdir as workdir_lib

log = logging.getLogger("stcl_jax.train")


class MetricWriter:
    """Scalars to TensorBoard + JSONL (process 0; a no-op elsewhere)."""

    def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int = 0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(workdir, exist_ok=True)
            path = os.path.join(workdir, workdir_lib.METRICS)
            replayed = drop_rows_after(path, resume_step)
            if replayed:
                log.info("metrics.jsonl: dropped %d rows after step %d (those steps are trained again)", replayed,
                         resume_step)
            # purge_step: TensorBoard hides the earlier files' events from that step on (the replayed ones)
            self._tb = SummaryWriter(os.path.join(workdir, workdir_lib.TENSORBOARD), purge_step=resume_step + 1 if resume_step
                                     else None)
            self._jsonl = open(path, "a", encoding="utf-8")

    def write(self, step: int, scalars: dict):
        if not self.enabled or not scalars:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()

    def flush(self):
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites the JSONL at `path` without its rows of steps > `step` (atomically); returns how many went."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a row cut short by a kill: dropped with the replayed ones
            pass
    if len(keep) != len(lines):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)
    return len(lines) - len(keep)


def last_logged(workdir: str) -> dict:
    """The newest value of every metric in workdir/metrics.jsonl, named as `train_and_evaluate` returns them
    ("loss", "val/miou", ...; {} without a file)."""
    out = {}
    path = os.path.join(workdir, workdir_lib.METRICS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    out.update({k.removeprefix("train/"): v for k, v in row.items() if k != "step"})
    return out


@contextlib.contextmanager
def log_file(path: str):
    """Copies the stcl_jax log lines to `path` (appended; process 0) while the block runs."""
    if jax.process_index() != 0:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("stcl_jax")
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class Progress:
    """Throughput and ETA from wall-clock time between `update` calls (the first interval includes no compile)."""

    def __init__(self, total_steps: int, images_per_step: int, start_step: int = 0):
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> dict:
        """{"img_per_s", "steps_per_s", "eta_s"} for the steps since the previous call."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 0)
        dt = max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        steps_per_s = steps / dt
        eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
        return {"img_per_s": steps_per_s * self.images_per_step, "steps_per_s": steps_per_s, "eta_s": eta}


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def progress_line(step: int, total: int, metrics: dict, speed: dict) -> str:
    """'step 120/20000 | loss 1.234 (ce 0.9 aux 0.5 stcl 1.2) | lr 3.1e-05 | 45.2 img/s | ETA 1:02:03'."""
    terms = " ".join(f"{k} {metrics[k]:.4f}" for k in ("ce", "aux", "stcl") if k in metrics)
    return (f"step {step}/{total} | loss {metrics['loss']:.4f} ({terms}) | lr {metrics['lr']:.3g} | "
            f"{speed['img_per_s']:.1f} img/s | ETA {format_eta(speed['eta_s'])}")


def check_finite(step: int, metrics: dict, state_finite: bool = True, last_good: str = ""):
    """Raises FloatingPointError (one line: the step, the non-finite metrics or state, the last good checkpoint)
    when any metric (loss terms, grad_norm, lr) is NaN or inf, or the updated state is not finite."""
    bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
    what = [f"metrics {bad}"] if bad else []
    if not state_finite:
        what.append("parameters or BatchNorm statistics after the update")
    if what:
        raise FloatingPointError(
            f"training stopped at step {step}: non-finite {' and '.join(what)}; nothing of this step was saved"
            f"{'; ' + last_good if last_good else ''}. Lower config.optim.learning_rate (or set "
            "config.optim.grad_clip_norm), or check the data (labels, normalisation)")
