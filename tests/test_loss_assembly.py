"""The train step's loss, assembled by hand: 1.0 CE + 0.4 aux CE over every frame + 0.2 STCL (anchors: the
query frame 0; contrast: every frame of the clip), in float64 NumPy from the model's own outputs; and the
feature the projection head reads (`model.projection.feature`)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcl_jax.configs import base as common  # noqa: E402

from stcl_jax.models import build_segmenter, model_config  # noqa: E402
from stcl_jax.models.heads import ProjectionHead  # noqa: E402
from stcl_jax.training.loop import make_train_step  # noqa: E402
from stcl_jax.training.optim import make_optimizer  # noqa: E402
from stcl_jax.training.state import TrainState  # noqa: E402

B, T, H, W, CLASSES, IGNORE = 2, 2, 32, 32, 3, 255


def tiny_config():
    """A micro ResNet segmenter without dropout (deterministic), the default projection feature."""
    c = common.runlocal(common.base_config())
    c.data.crop_size, c.data.device_normalize = (H, W), False
    c.model = model_config("micro", backbone="resnet50", num_classes=CLASSES,
                           **{"decoder.dropout": 0.0, "aux.dropout": 0.0})
    return c


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_ce(logits, labels, average):
    """mmseg CrossEntropyLoss: mean over the valid pixels, or over all pixels ("all": avg_non_ignore=False)."""
    logits, valid = np.asarray(logits, np.float64), labels != IGNORE
    nll = -np.take_along_axis(log_softmax(logits), np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return (nll * valid).sum() / (labels.size if average == "all" else valid.sum())


def reference_stcl(emb, labels, tau, anchor_frames=(0,)):
    """Paper eq. 1-2 per clip: anchors = valid pixels of `anchor_frames`, contrast = valid pixels of all frames."""
    losses = []
    for b in range(emb.shape[0]):
        z = np.asarray(emb[b], np.float64).reshape(-1, emb.shape[-1])
        z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        lab = labels[b].reshape(-1)
        frame = np.repeat(np.arange(emb.shape[1]), emb.shape[2] * emb.shape[3])
        for i in np.flatnonzero((lab != IGNORE) & np.isin(frame, anchor_frames)):
            others = (lab != IGNORE) & (np.arange(lab.size) != i)
            pos, neg = others & (lab == lab[i]), others & (lab != lab[i])
            if not pos.any():
                continue
            s = z @ z[i] / tau
            denominators = np.exp(s[pos]) + np.exp(s[neg]).sum()
            losses.append(np.mean(-(s[pos] - np.log(denominators))))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def step_and_outputs():
    """One compiled program: the train step's metrics, and the model's training-mode outputs on the same batch
    with the backbone's and the decoder's outputs captured."""
    c = tiny_config()
    model = build_segmenter(c.model)
    tx, schedule = make_optimizer(c)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(B, T, H, W, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=(B, T, H, W)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = IGNORE
    labels[1, 1, :, : W // 2] = IGNORE  # frames of unequal valid share: the CE reductions differ
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels), "stcl": jnp.ones((B,), bool)}
    step = make_train_step(model, tx, schedule, c)
    keep = lambda module, method: module.name in ("backbone", "decode_head")  # noqa: E731

    def run(key):
        variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, H, W, 3)))
        state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                           batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
                           rng=jax.random.PRNGKey(1))
        _, metrics = step(state, batch)
        out, captured = model.apply(variables, batch["image"].reshape(B * T, H, W, 3), train=True,
                                    capture_intermediates=keep, mutable=["batch_stats", "intermediates"])
        return variables, metrics, out, captured["intermediates"]

    return (c, labels, *jax.device_get(jax.jit(run)(jax.random.key(0))))


def test_train_step_loss_equals_hand_assembly(step_and_outputs):
    c, labels, _, metrics, out, _ = step_and_outputs
    average = c.loss.get("ce_average", "valid")
    flat = labels.reshape(B * T, H, W)
    ce, aux = reference_ce(out["logits"], flat, average), reference_ce(out["aux_logits"], flat, average)
    emb = out["embeddings"].reshape(B, T, *out["embeddings"].shape[1:])
    stride = H // emb.shape[2]
    small = labels[:, :, stride // 2::stride, stride // 2::stride]  # the label under each embedding cell's centre
    stcl = reference_stcl(emb, small, c.loss.temperature)
    np.testing.assert_allclose([metrics["ce"], metrics["aux"], metrics["stcl"]], [ce, aux, stcl], rtol=2e-5)
    assert (c.loss.ce_weight, c.loss.aux_weight, c.loss.stcl_weight) == (1.0, 0.4, 0.2)
    np.testing.assert_allclose(metrics["loss"], 1.0 * ce + 0.4 * aux + 0.2 * stcl, rtol=2e-5)
    # The references can tell the alternatives apart: CE on the query frame only, anchors from every frame.
    assert abs(reference_ce(out["logits"].reshape(B, T, H, W, -1)[:, 0], labels[:, 0], average) - ce) > 1e-3
    assert abs(reference_stcl(emb, small, c.loss.temperature, anchor_frames=(0, 1)) - stcl) > 1e-4


def test_projection_head_input(step_and_outputs):
    """The embeddings are the projection head (training mode: batch statistics) applied to the map named by the
    default `model.projection.feature`: the UperNet fused map, or encoder stage k for "stage{k}"."""
    c, _, variables, _, out, captured = step_and_outputs
    feature = c.model.projection.feature
    stages = captured["backbone"]["__call__"][0]
    source = captured["decode_head"]["__call__"][0][1] if feature == "fused" else stages[int(feature[-1]) - 1]
    head = {"params": variables["params"]["projection_head"],
            "batch_stats": variables["batch_stats"]["projection_head"]}
    expected, _ = ProjectionHead(c.model.projection.dim).apply(head, source, True, mutable=["batch_stats"])
    np.testing.assert_allclose(out["embeddings"], expected, rtol=1e-5, atol=1e-6)
    assert out["embeddings"].shape[1:3] == (H // c.model.projection.stride, W // c.model.projection.stride)
