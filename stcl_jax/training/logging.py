"""What a person sees during training: a progress line, TensorBoard event files and a JSONL log.

`MetricWriter` writes scalars to `workdir/tensorboard/` (tensorboardX) and `workdir/metrics.jsonl` (one JSON
object per logged step) from process 0 only. `Progress` turns step times into img/s and an ETA.
`check_finite` stops the run with the step number when a loss term is NaN or inf.
"""

import json
import logging
import math
import os
import sys
import time

import jax

log = logging.getLogger("stcl_jax.train")


def setup_logging():
    """INFO lines of stcl_jax on stdout with a timestamp; other libraries (Orbax, absl) at WARNING."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    logging.getLogger("stcl_jax").setLevel(logging.INFO)


class MetricWriter:
    """Scalars to TensorBoard + JSONL (process 0; a no-op elsewhere)."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

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


def check_finite(step: int, metrics: dict, keys=("loss", "ce", "aux", "stcl")):
    """Raises FloatingPointError naming the step and the terms when a loss term is NaN or inf."""
    bad = {k: float(metrics[k]) for k in keys if k in metrics and not math.isfinite(float(metrics[k]))}
    if bad:
        raise FloatingPointError(
            f"training stopped at step {step}: non-finite loss {bad}. Lower config.optim.learning_rate, check the "
            "data (labels, normalisation) or resume from the last checkpoint (its step is before this one).")
