"""Train the two networks shipped in attrib/data/weights/ on the synthetic shapes data (CPU, a few minutes each).

    python scripts/train_models.py --threads 1     # both models, as shipped (about 15 + 10 min on a busy 2-core CPU)
    python scripts/train_models.py --model shapes-cnn --images 20000 --out /tmp/weights

The plain CNN is trained with a BatchNorm after each convolution, which is
then folded into the convolution (eval-mode BatchNorm is an affine map per
channel), so the shipped network is plain conv + ReLU, without BatchNorm.
Every batch is freshly generated (seeds 1_000_000 and up, never used for
evaluation), so the networks do not overfit; the script prints the
accuracy on 2,000 fresh images (seed 7) and saves float16 state_dicts.
Deterministic: a fixed torch seed for the initialisation and fixed data seeds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from attrib.data import accuracy
from attrib.data.models import MODEL_NAMES, ShapesCNN, build
from attrib.data.shapes import make_shapes

DEFAULT_IMAGES = {"shapes-cnn": 80_000, "shapes-resnet": 40_000}
WEIGHTS = Path(__file__).resolve().parent.parent / "attrib" / "data" / "weights"


def with_batch_norm(plain: nn.Sequential) -> nn.Sequential:
    """``plain`` (a Sequential of convs, ReLUs, pools) with a fresh BatchNorm after each convolution."""
    layers: list[nn.Module] = []
    for layer in plain:
        layers.append(layer)
        if isinstance(layer, nn.Conv2d):
            layers.append(nn.BatchNorm2d(layer.out_channels))
    return nn.Sequential(*layers)


def fold_batch_norm(trained: nn.Sequential, plain: nn.Sequential) -> None:
    """Copy ``trained`` (conv, BN, ...) into ``plain`` (conv, ...): ``w' = w s``, ``b' = (b - mean) s + beta``,
    ``s = gamma / sqrt(var + eps)`` per output channel."""
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    pairs = [(a, b) for a, b in zip(trained, list(trained)[1:]) if isinstance(a, nn.Conv2d)]
    assert len(convs) == len(pairs)
    with torch.no_grad():
        for target, (conv, bn) in zip(convs, pairs):
            assert isinstance(bn, nn.BatchNorm2d)
            assert bn.running_var is not None and bn.running_mean is not None
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            target.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            assert target.bias is not None
            target.bias.copy_((bias - bn.running_mean) * scale + bn.bias)


def train(name: str, images: int, batch: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    model = build(name)
    plain = None
    if isinstance(model, ShapesCNN):
        plain = model
        model = build(name)
        model.features = with_batch_norm(model.features)
    steps = images // batch
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = nn.BCEWithLogitsLoss()
    chunk = 1024
    model.train()
    start = time.time()
    step = 0
    for c in range(0, steps * batch, chunk):
        data = make_shapes(chunk, seed=1_000_000 + c // chunk)
        for b in range(0, chunk, batch):
            if step >= steps:
                break
            x, y = data.images[b : b + batch], data.labels[b : b + batch].float()
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
        print(f"{name}: {step}/{steps} steps, loss {loss.item():.4f}, {time.time() - start:.0f} s", flush=True)
    model.eval()
    if plain is not None:
        fold_batch_norm(model.features, plain.features)
        plain.classifier.load_state_dict(model.classifier.state_dict())
        test = make_shapes(256, seed=7)
        with torch.no_grad():
            gap = (plain.eval()(test.images) - model(test.images)).abs().max()
        print(f"{name}: folded BatchNorm into the convolutions (largest logit change {gap:.2e})", flush=True)
        return plain
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODEL_NAMES, action="append", help="model(s) to train (default: both)")
    parser.add_argument("--images", type=int, default=None,
                        help="training images seen (default: 80000 for shapes-cnn, 40000 for shapes-resnet)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="directory of the weights (default: the package's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    test = make_shapes(2000, seed=7)
    for name in args.model or MODEL_NAMES:
        model = train(name, args.images or DEFAULT_IMAGES[name], args.batch, args.lr)
        state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        path = args.out / f"{name}.pt"
        torch.save(state, path)
        half = build(name)
        half.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        exact, per_label = accuracy(half.eval(), test)
        print(f"{name}: saved {path} ({path.stat().st_size / 1e3:.0f} kB); on 2000 fresh images: "
              f"exact-match accuracy {exact:.3f}, per-label accuracy {per_label:.3f}", flush=True)


if __name__ == "__main__":
    main()
