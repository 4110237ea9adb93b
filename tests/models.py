"""Small random models for tests, built deterministically from a spec and a seed.

Weights come from a private ``torch.Generator``, never the global RNG, so the
tests can check that attrib leaves the global RNG alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

RELU_STYLES = (
    "module",  # nn.ReLU()
    "module_inplace",  # nn.ReLU(inplace=True)
    "functional",  # F.relu(x)
    "functional_inplace",  # F.relu(x, inplace=True)
    "torch",  # torch.relu(x)
    "torch_inplace",  # torch.relu_(x)
    "tensor",  # x.relu()
    "tensor_inplace",  # x.relu_()
)


class FunctionalReLU(nn.Module):
    """A ReLU applied through a function call rather than an ``nn.ReLU`` module."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.style == "functional":
            return F.relu(x)
        if self.style == "functional_inplace":
            return F.relu(x, inplace=True)
        if self.style == "torch":
            return torch.relu(x)
        if self.style == "torch_inplace":
            return torch.relu_(x)
        if self.style == "tensor":
            return x.relu()
        if self.style == "tensor_inplace":
            return x.relu_()
        raise ValueError(self.style)


def relu(style: str) -> nn.Module:
    """The activation of a style; ``"tanh"`` gives a ReLU-free model."""
    if style == "tanh":
        return nn.Tanh()
    if style == "module":
        return nn.ReLU()
    if style == "module_inplace":
        return nn.ReLU(inplace=True)
    return FunctionalReLU(style)


def reinitialise(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Fill parameters and BatchNorm statistics from a private generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(
                torch.randn(p.shape, generator=g) * scale / fan_in**0.5
                if p.dim() > 1
                else torch.randn(p.shape, generator=g) * 0.1
            )
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@dataclass(frozen=True)
class Spec:
    """A conv/linear/ReLU/pool stack: input (C, H, W), conv blocks, hidden linears, classes."""

    channels: int
    size: int
    convs: tuple[int, ...]
    pools: tuple[bool, ...]
    hidden: tuple[int, ...]
    classes: int
    relu_styles: tuple[str, ...]
    seed: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


def build(spec: Spec) -> nn.Sequential:
    """A Sequential model from ``spec`` (ReLU styles cycle over the activations)."""
    layers: list[nn.Module] = []
    styles = iter(spec.relu_styles * 8)
    c, s = spec.channels, spec.size
    for out, pool in zip(spec.convs, spec.pools):
        layers += [nn.Conv2d(c, out, 3, padding=1), relu(next(styles))]
        c = out
        if pool and s >= 2:
            layers.append(nn.MaxPool2d(2))
            s //= 2
    layers.append(nn.Flatten())
    features = c * s * s
    for h in spec.hidden:
        layers += [nn.Linear(features, h), relu(next(styles))]
        features = h
    layers.append(nn.Linear(features, spec.classes))
    return reinitialise(nn.Sequential(*layers), spec.seed).eval()


@st.composite
def specs(draw: st.DrawFn, styles: tuple[str, ...] = RELU_STYLES) -> Spec:
    n_convs = draw(st.integers(0, 2))
    return Spec(
        channels=draw(st.integers(1, 3)),
        size=draw(st.integers(3, 6)),
        convs=tuple(draw(st.integers(1, 4)) for _ in range(n_convs)),
        pools=tuple(draw(st.booleans()) for _ in range(n_convs)),
        hidden=tuple(draw(st.integers(2, 8)) for _ in range(draw(st.integers(0, 2)))),
        classes=draw(st.integers(2, 5)),
        relu_styles=tuple(draw(st.sampled_from(styles)) for _ in range(4)),
        seed=draw(st.integers(0, 2**16)),
    )


class ResidualBNNet(nn.Module):
    """conv-BN-ReLU, a residual block with BatchNorm and an add, pooling, a linear head."""

    def __init__(self, channels: int = 3, width: int = 4, classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(width * 4, classes)
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y = self.relu2(y + x)
        return self.head(self.pool(y).flatten(1))


class TwoInputNet(nn.Module):
    """Two inputs (an image and a vector) and a per-example extra tensor argument."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.vec = nn.Linear(4, 6)
        self.head = nn.Linear(3 * 4 * 4 + 6, 3)
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, image: torch.Tensor, vector: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        a = F.relu(self.conv(image)).flatten(1)
        b = torch.relu(self.vec(vector))
        out = self.head(torch.cat([a, b], dim=1))
        return out if gain is None else out * gain.view(-1, 1)


class SmoothNet(nn.Module):
    """A smooth, ReLU-free MLP (tanh) for IG convergence and DeconvNet checks."""

    def __init__(self, features: int = 6, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.l1 = nn.Linear(features, 8)
        self.l2 = nn.Linear(8, classes)
        reinitialise(self, seed, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))


def inputs_for(shape: tuple[int, ...], n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64).to(dtype)


def assert_batch_invariant(  # type: ignore[no-untyped-def]
    attribute, x: torch.Tensor, target: torch.Tensor, batch_sizes, perm_seed: int, /, **options
) -> None:
    """``attribute(x, target, batch_size=..., **options)`` is independent of ``batch_size`` and batch-equivariant.

    Every ``batch_sizes`` entry gives the one-block result; permuting the
    examples permutes the maps; one example at a time gives the same maps.
    """
    whole = attribute(x, target, batch_size=None, **options)
    for batch_size in batch_sizes:
        torch.testing.assert_close(attribute(x, target, batch_size=batch_size, **options), whole)
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    torch.testing.assert_close(attribute(x[perm], target[perm], **options), whole[perm])
    single = torch.cat([attribute(x[i : i + 1], target[i : i + 1], **options) for i in range(n)])
    torch.testing.assert_close(single, whole)
