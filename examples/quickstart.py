"""Train a tiny CNN on synthetic images and print what each attrib method says it looks at.

    python examples/quickstart.py

The data needs no download: 16x16 grey images of noise with one bright 4x4
square; the label is the quadrant the square sits in. A network that solves
the task must look at the square, so a good map puts its mass there. The
script trains for a few seconds on the CPU, then prints, for one test image,
every method's map as ASCII art and, over the test set, the share of each
map's mass that falls on the square.
"""

from __future__ import annotations

import torch
from torch import nn

import attrib

SIZE, SQUARE = 16, 4


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (n, 1, 16, 16), labels (n,) and square masks (n, 1, 16, 16)."""
    images = 0.3 * torch.randn(n, 1, SIZE, SIZE, generator=generator)
    labels = torch.randint(0, 4, (n,), generator=generator)
    masks = torch.zeros(n, 1, SIZE, SIZE)
    half = SIZE // 2
    offsets = torch.randint(0, half - SQUARE + 1, (n, 2), generator=generator)
    for i in range(n):  # data generation only, not a hot path
        top = (labels[i] // 2) * half + offsets[i, 0]
        left = (labels[i] % 2) * half + offsets[i, 1]
        masks[i, 0, top : top + SQUARE, left : left + SQUARE] = 1.0
    return images + 2.0 * masks, labels, masks


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 4),
    )


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        batch = torch.randint(0, len(images), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


def ascii_map(heat: torch.Tensor) -> list[str]:
    """A (16, 16) map in [0, 1] as 16 lines of characters, darkest to brightest."""
    ramp = " .:-=+*#%@"
    levels = (heat.clamp(0, 1) * (len(ramp) - 1)).round().long()
    return ["".join(ramp[v] * 2 for v in row) for row in levels.tolist()]


def main() -> None:
    torch.manual_seed(0)  # model initialisation
    generator = torch.Generator().manual_seed(0)
    train_x, train_y, _ = make_data(4000, generator)
    test_x, test_y, test_masks = make_data(256, generator)
    model = make_model()
    train(model, train_x, train_y, generator)
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    print(f"tiny CNN trained on synthetic squares: test accuracy {accuracy:.1%}\n")

    heat = (attrib.ReduceChannels("abs_max"), attrib.MinMaxNormalize())
    methods = {
        "Saliency": attrib.Saliency(model).then(*heat),
        "InputXGradient": attrib.InputXGradient(model).then(*heat),
        "IntegratedGradients": attrib.IntegratedGradients(model).then(*heat),
        "SmoothGrad": attrib.NoiseTunnel(attrib.Saliency(model)).then(*heat),
        "GuidedBackprop": attrib.GuidedBackprop(model).then(*heat),
        "Deconvnet": attrib.Deconvnet(model).then(*heat),
        "GuidedBackprop x IG": (attrib.GuidedBackprop(model) * attrib.IntegratedGradients(model)).then(*heat),
    }
    options = {"SmoothGrad": {"seed": 0, "n_samples": 32}, "IntegratedGradients": {"batch_size": 512}}

    maps = {name: m.attribute(test_x, target=test_y, **options.get(name, {})) for name, m in methods.items()}
    square_share = 16 / (SIZE * SIZE)
    print(f"share of each map's mass on the square (the square is {square_share:.0%} of the image):")
    for name, m in maps.items():
        share = ((m * test_masks).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1e-12)).mean().item()
        print(f"  {name:22s} {share:6.1%}")

    example = 0
    print(f"\ntest image {example} (label {int(test_y[example])}) and its maps:\n")
    panels = [("image", ascii_map((test_x[example, 0] - test_x[example, 0].min()) / 3.0))]
    panels += [(name, ascii_map(m[example, 0])) for name, m in list(maps.items())[:3]]
    panels2 = [(name, ascii_map(m[example, 0])) for name, m in list(maps.items())[3:6]]
    for row in (panels, panels2):
        print("   ".join(f"{name:32s}" for name, _ in row))
        for line in range(SIZE):
            print("   ".join(lines[line] for _, lines in row))
        print()


if __name__ == "__main__":
    main()
