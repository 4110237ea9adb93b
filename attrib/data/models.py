"""The two networks shipped with the localisation benchmark, trained on :mod:`attrib.data.shapes`.

* ``"shapes-cnn"`` (:class:`ShapesCNN`): a plain VGG-like network, ReLU
  modules only, a global average pool and a two-layer classifier.
* ``"shapes-resnet"`` (:class:`ShapesResNet`): a small residual network with
  BatchNorm and in-place ReLUs (as torchvision's ResNets), so that results
  do not hinge on one architecture.

Both take ``(N, 3, 64, 64)`` images in ``[0, 1]`` (no normalisation) and
return ``(N, 5)`` logits, one per class of :data:`attrib.data.CLASSES`
(multi-label: a class is predicted present where its logit is positive).
Each carries ``attrib_layers``, the layers the ``attrib`` command uses for
layer methods (``"cam"``) and for contrastive excitation (``"contrast"``,
``"classifier"``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .shapes import CLASSES, IMAGE_SIZE

MODEL_NAMES: tuple[str, ...] = ("shapes-cnn", "shapes-resnet")


class ShapesCNN(nn.Module):
    """Plain CNN: 5 conv layers (16-32-32-64-64 channels), 2 max-pools, global average pool, MLP head.

    Shapes: ``(N, 3, 64, 64) -> (N, 5)``; the last conv block works at 16 x 16.
    """

    input_size = IMAGE_SIZE
    attrib_multilabel = True
    attrib_layers = {"cam": "features.11", "contrast": "classifier.3", "classifier": "classifier.4"}

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.classifier(self.features(x))
        return out


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with in-place ReLUs, as torchvision's."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        result: Tensor = self.relu(out)
        return result


class ShapesResNet(nn.Module):
    """Residual network: a stem (conv, BN, ReLU, max-pool), three basic blocks, global average pool, linear head.

    Shapes: ``(N, 3, 64, 64) -> (N, 5)``; the last block works at 16 x 16.
    """

    input_size = IMAGE_SIZE
    attrib_multilabel = True
    attrib_layers = {"cam": "layer3", "contrast": "avgpool", "classifier": "fc"}

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.layer3 = BasicBlock(32, 64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        out: Tensor = self.fc(self.avgpool(x).flatten(1))
        return out


def build(name: str) -> nn.Module:
    """An untrained instance of the shipped architecture ``name``."""
    if name == "shapes-cnn":
        return ShapesCNN()
    if name == "shapes-resnet":
        return ShapesResNet()
    raise ValueError(f"unknown shipped model {name!r}; choose from {', '.join(MODEL_NAMES)}")
