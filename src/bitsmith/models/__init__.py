"""The model zoo: LeNet-5, NIN, VGG7, VGG-tiny, UltraNet (+ bypass), SkyNet, ResNet-20 and MobileNetV2-tiny.

All models use only the layers the quantizer lowers (Conv2d, BatchNorm, ReLU / ReLU6 modules, pools,
AdaptiveAvgPool2d, Flatten, Linear, Dropout, `Reorg`, `torch.cat`, the residual `+`) and trace with
`torch.fx`. Build them by name:

    model = build_model("lenet5")                 # defaults: 10 classes, 1 x 32 x 32
    rows = model_summary(model)                   # per-layer shapes, params, MACs
"""

from bitsmith.models.layers import Reorg
from bitsmith.models.registry import MODEL_NAMES, build_model, spatial_multiple
from bitsmith.models.summary import LayerSummary, format_summary, model_summary

__all__ = [
    "MODEL_NAMES",
    "spatial_multiple",
    "LayerSummary",
    "Reorg",
    "build_model",
    "format_summary",
    "model_summary",
]
