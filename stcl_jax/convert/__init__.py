"""Import PyTorch Swin / UperNet weights into stcl_jax variables, offline.

    variables, model_config = stcl_jax.convert.from_hf_upernet("path/to/save_pretrained_dir")  # or a state dict
    model = stcl_jax.models.build_segmenter(model_config)
    logits = model.apply(variables, images, train=False)["logits"]

`from_hf_upernet` (and `from_mmseg_upernet`) give full segmenter variables; the projection head, which no
public checkpoint has, is freshly initialised (seed 0) and reported as missing. `from_hf_swin`, `from_timm_swin`
and `from_swin_official` are backbone-only: they return `{"params": {"backbone": ...}}` (the per-stage output
norms `norm0..3`, absent from classification checkpoints, set to the LayerNorm init) and a model config whose
`swin` group matches the checkpoint; merge them into a segmenter (training's `init_from` does).

ResNet-50 / ResNeSt-101 (timm, mmseg): `from_timm_resnet`, `from_mmseg_resnet`, `from_mmseg_upernet_resnet`
(stcl_jax/convert/cnn.py); those backbone-only imports keep the BatchNorm running statistics.

CSWin Transformer (official classification checkpoints or segmentation backbone): `from_cswin_official`
(stcl_jax/convert/cswin.py), backbone-only.

Every import logs its report: keys loaded, missing (and how filled), unused, ignored derived buffers, and the
relative-position tables interpolated when `window_size` differs from the checkpoint's (bicubic, as mmseg).
"""

from stcl_jax.convert.cnn import from_mmseg_resnet, from_mmseg_upernet_resnet, from_timm_resnet
from stcl_jax.convert.common import ConversionReport
from stcl_jax.convert.cswin import from_cswin_official
from stcl_jax.convert.swin import (SOURCES, convert_state_dict, from_hf_swin, from_hf_upernet, from_mmseg_upernet,
                                   from_swin_official, from_timm_swin)
from stcl_jax.convert.tensors import load_state_dict

__all__ = ["SOURCES", "ConversionReport", "from_cswin_official", "from_timm_resnet", "from_mmseg_resnet",
           "from_mmseg_upernet_resnet",
           "convert_state_dict", "from_hf_upernet", "from_mmseg_upernet", "from_hf_swin", "from_timm_swin",
           "from_swin_official", "load_state_dict"]
