"""Weight import: key layouts of every source, bias-table interpolation, reports, the CLI and models/io."""

import logging
import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from stcl_jax import convert  # noqa: E402
from stcl_jax.convert.__main__ import main as convert_main  # noqa: E402
from stcl_jax.convert.tensors import resize_relative_position_table  # noqa: E402
from stcl_jax.models.io import load_variables  # noqa: E402

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_swin_config(**kw):
    return transformers.SwinConfig(embed_dim=8, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 2], window_size=3,
                                   out_features=STAGES, **kw)


@pytest.fixture(scope="module")
def hf_swin_state():
    torch.manual_seed(0)
    model = transformers.SwinModel(tiny_swin_config(), add_pooling_layer=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_()
    return {k: v.numpy() for k, v in model.state_dict().items()}


def official_from_hf(sd):
    """Hand-written HF SwinModel -> official Swin key layout (fused qkv, downsample at stage end)."""
    out = {}
    for key, v in sd.items():
        k = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
        k = k.replace("embeddings.norm", "patch_embed.norm").replace("encoder.layers", "layers")
        k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
        k = k.replace("attention.o_proj", "attn.proj")
        k = k.replace("attention.relative_position_bias.", "attn.")
        k = re.sub(r"^layernorm\.", "norm.", k)
        if "attention.q_proj" in k:
            parts = [sd[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[k.replace("attention.q_proj", "attn.qkv")] = np.concatenate(parts, axis=0)
        elif "attention.k_proj" not in k and "attention.v_proj" not in k:
            out[k] = v
    for name in [k for k in out if k.endswith("relative_position_bias_table")]:
        out[name.replace("bias_table", "index")] = np.zeros((9, 9), np.int64)  # a derived buffer
    out["head.weight"] = np.zeros((10, 64), np.float32)
    return out


def test_official_and_timm_layouts_equal_hf(hf_swin_state):
    ref, ref_cfg = convert.from_hf_swin(hf_swin_state)
    official = official_from_hf(hf_swin_state)
    got, cfg, report = convert.from_swin_official({"model": official}, return_report=True)
    assert cfg == ref_cfg and cfg.swin.depths == (1, 2, 1, 1) and cfg.swin.window_size == 3
    jax.tree.map(np.testing.assert_array_equal, got, ref)
    assert sorted(report.unused) == ["head.weight", "norm.bias", "norm.weight"]
    assert len(report.ignored) == 5 and all(k.endswith("relative_position_index") for k in report.ignored)
    assert sorted(report.missing) == sorted(f"params/backbone/norm{i}/{n} (LayerNorm init)"
                                            for i in range(4) for n in ("bias", "scale"))
    # timm >= 0.9 moved each stage's downsample to the start of the next stage.
    timm_new = {re.sub(r"layers\.(\d)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k): v
                for k, v in official.items()}
    assert "layers.1.downsample.reduction.weight" in timm_new and "layers.0.downsample.norm.bias" not in timm_new
    got_new, _ = convert.from_timm_swin(timm_new)
    got_old, _ = convert.from_timm_swin(official)
    jax.tree.map(np.testing.assert_array_equal, got_new, ref)
    jax.tree.map(np.testing.assert_array_equal, got_old, ref)


def test_mmseg_layout_equals_hf_upernet(hf_swin_state):
    """mmseg / Swin-Transformer-Semantic-Segmentation checkpoints: official backbone names + mmseg head names."""
    torch.manual_seed(0)
    cfg = transformers.UperNetConfig(backbone_config=tiny_swin_config(), hidden_size=16, auxiliary_channels=8,
                                     num_labels=4)
    hf = {k: v.numpy() for k, v in transformers.UperNetForSemanticSegmentation(cfg).state_dict().items()}
    backbone = official_from_hf({k[len("backbone.swin."):]: v for k, v in hf.items()
                                 if k.startswith("backbone.swin.")})
    mmseg = {f"backbone.{k}": v for k, v in backbone.items() if not k.startswith(("norm.", "head."))}
    for k, v in hf.items():
        if k.startswith("backbone.hidden_states_norms.stage"):
            mmseg[f"backbone.norm{int(k.split('stage')[1][0]) - 1}.{k.rsplit('.', 1)[1]}"] = v
        elif k.startswith(("decode_head.", "auxiliary_head.")):
            mmseg[k.replace("batch_norm", "bn").replace("classifier", "conv_seg")] = v
    a, cfg_a = convert.from_hf_upernet(hf)
    b, cfg_b = convert.from_mmseg_upernet({"state_dict": mmseg, "meta": {"epoch": 3}})
    assert cfg_a == cfg_b
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bias_table_resize_matches_torch_bicubic():
    rng = np.random.RandomState(0)
    for src, dst in [(7, 12), (12, 7), (3, 5)]:
        table = rng.randn((2 * src - 1) ** 2, 3).astype(np.float32)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(table.T.reshape(1, 3, 2 * src - 1, 2 * src - 1)), size=(2 * dst - 1, 2 * dst - 1),
            mode="bicubic", align_corners=False).numpy().reshape(3, -1).T
        np.testing.assert_allclose(resize_relative_position_table(table, dst), ref, rtol=1e-5, atol=1e-5)


def test_window_change_interpolates_and_says_so(hf_swin_state, caplog):
    with caplog.at_level(logging.WARNING):
        variables, cfg, report = convert.from_hf_swin(hf_swin_state, window_size=5, return_report=True)
    assert cfg.swin.window_size == 5 and len(report.interpolated) == 5
    assert "interpolated (bicubic) from window 3 to window 5" in caplog.text
    table = variables["params"]["backbone"]["layers_1"]["blocks_1"]["attn"]["relative_position_bias_table"]
    assert table.shape == (81, 2)


def test_bad_inputs_name_the_problem(hf_swin_state, tmp_path):
    with pytest.raises(ValueError, match="no Swin backbone tensors recognised as 'hf-swin'"):
        convert.from_hf_swin({"foo.weight": np.zeros(3, np.float32)})
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        convert.from_swin_official(str(tmp_path / "nope.pth"))
    bad = dict(hf_swin_state)
    bad["embeddings.norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="patch_embed/norm/scale has shape"):
        convert.from_hf_swin(bad)
    with pytest.raises(FileNotFoundError, match="--input .*missing"):  # one line, exit 2 under cli_errors.run
        convert_main(["--from", "hf-swin", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")])


def test_cli_writes_what_load_variables_reads(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = transformers.UperNetConfig(backbone_config=tiny_swin_config(), hidden_size=16, auxiliary_channels=8,
                                     num_labels=4)
    transformers.UperNetForSemanticSegmentation(cfg).save_pretrained(tmp_path / "hf")
    assert convert_main(["--from", "hf-upernet", "--input", str(tmp_path / "hf"), "--output",
                         str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "unused: backbone.swin.layernorm.weight" in printed
    assert "missing: params/projection_head/fc/kernel" in printed
    variables, model_cfg = load_variables(str(tmp_path / "out"))
    ref, ref_cfg = convert.from_hf_upernet(str(tmp_path / "hf"))
    assert model_cfg == ref_cfg and model_cfg.num_classes == 4 and model_cfg.decoder.channels == 16
    jax.tree.map(np.testing.assert_array_equal, variables, jax.tree.map(np.asarray, ref))
    # Backbone-only: only params/backbone, config carries the requested class count.
    hf_sd = {k: v.numpy() for k, v in transformers.SwinModel(tiny_swin_config()).state_dict().items()}
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official_from_hf(hf_sd).items()}},
               tmp_path / "swin.pth")
    assert convert_main(["--from", "swin-official", "--input", str(tmp_path / "swin.pth"), "--output",
                         str(tmp_path / "bb"), "--num-classes", "7", "--window-size", "4"]) == 0
    variables, model_cfg = load_variables(str(tmp_path / "bb"))
    assert set(variables["params"]) == {"backbone"} and variables["batch_stats"] == {}
    assert model_cfg.num_classes == 7 and model_cfg.swin.window_size == 4
