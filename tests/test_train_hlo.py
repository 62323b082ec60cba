"""The lowered train step of `configs/demo.py:runlocal` (StableHLO text before XLA's passes, no compile).

No dot runs at `precision = HIGHEST` (the multi-pass fp32 emulation `jax.image.resize` used for every bilinear
resize), and with `model.dtype="bfloat16"` no dot multiplies two float32 operands: every resize is slices and
lerps, every matmul of the model reads bf16.
"""

import os
import re

import jax
import pytest

from stcl_jax.models import build_segmenter
from stcl_jax.training import inputs, loop, optim
from stcl_jax.training import mesh as mesh_lib
from stcl_jax.training import state as state_lib

from stcl_jax.config_files import load_config_module  # noqa: E402
demo = load_config_module(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py"))

# One dot's operand types, e.g. `: (tensor<4x16x16x16xf32>, tensor<16x48xf32>) -> tensor<...>`.
_OPERANDS = re.compile(r":\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)\s*->")


def _lowered_step_text(dtype: str) -> str:
    c = demo.get_config("runlocal")
    c.unlock()
    c.model.unlock()
    c.model.dtype = dtype
    c.lock()
    model = build_segmenter(c.model)
    tx, schedule = optim.make_optimizer(c)
    mesh = mesh_lib.make_mesh(jax.local_devices()[:1])
    abstract, _ = state_lib.abstract_state_and_shardings(model, tx, (1, *c.data.crop_size, 3), mesh, c.mesh)
    batch = {k: jax.ShapeDtypeStruct(shape, dt) for k, (shape, dt) in inputs.batch_spec(c, 2).items()}
    return jax.jit(loop.make_train_step(model, tx, schedule, c)).lower(abstract, batch).as_text()


def _dots(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.dot_general" in line]


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def step_dots(request):
    return request.param, _dots(_lowered_step_text(request.param))


def test_no_highest_precision_dot(step_dots):
    dtype, dots = step_dots
    assert len(dots) > 20, "the text format changed: no dots found"  # the model's matmuls are there
    assert all("precision = [DEFAULT, DEFAULT]" in d or "precision" not in d for d in dots), dtype
    assert not [d for d in dots if "HIGHEST" in d], dtype


def test_bfloat16_model_has_no_float32_dot(step_dots):
    dtype, dots = step_dots
    operands = [_OPERANDS.search(d).groups() for d in dots]
    assert all(operands), "a dot whose operand types the pattern does not read"
    f32 = [d for d, (a, b) in zip(dots, operands) if a.endswith("xf32>") and b.endswith("xf32>")]
    if dtype == "bfloat16":
        assert not f32, f32[:3]
    else:
        assert len(f32) == len(dots)  # the pattern does see float32 dots when there are some


def test_a_bad_ce_average_names_the_field():
    c = demo.get_config("runlocal")
    c.unlock()
    c.loss.ce_average = "mean"
    model = build_segmenter(c.model)
    tx, schedule = optim.make_optimizer(c)
    with pytest.raises(ValueError, match=r"config\.loss\.ce_average='mean'"):
        loop.make_train_step(model, tx, schedule, c)
