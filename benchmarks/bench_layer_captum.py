"""Time attrib's Layer IG, Layer Conductance, Layer Activation and Layer Gradient x Activation against Captum.

    python benchmarks/bench_layer_captum.py                        # CPU, defaults below
    python benchmarks/bench_layer_captum.py --device cuda --batch 16 --steps 50 --batch-size 128

Two models, random weights, eval mode, measured in one run:

* **ResNet-18**, ``layer3``, 64 px images (torchvision).
* **Text**: token ids ``(N, T)`` -> ``Embedding(5000, 128)`` -> ``LSTM(128, 128)``
  -> last state -> ``Linear(128, 2)``; attributed at the embedding's output,
  pad-token (id 0) baselines for Layer IG.

Both libraries get the same settings: ``n_steps``, the Gauss-Legendre rule,
and attrib's ``batch_size`` equal to Captum's ``internal_batch_size`` (rows in
one pass). Captum's Layer Conductance recomputes one step per internal batch
(its blocks overlap by a step); attrib carries each example's last step from
one block to the next. With ``K`` targets per example attrib makes one call
(one forward pass per block, ``K`` backward passes), Captum ``K`` calls.

Columns: the median time of ``--repeats`` interleaved runs after a warm-up
(:mod:`timing`), ``captum / attrib`` (> 1: attrib is faster), and the largest
difference between the two maps relative to Captum's largest value (a check
that both compute the same thing).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from timing import timed
from torch import nn

from attrib.methods.layer_activation import LayerActivation, LayerGradientXActivation
from attrib.methods.layer_integrated_gradients import LayerConductance, LayerIntegratedGradients

warnings.filterwarnings("ignore")  # Captum warns on every call


class TextModel(nn.Module):
    def __init__(self, vocab: int = 5000, dim: int = 128, classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))
        return self.head(states[:, -1])


def _map(result: Any) -> torch.Tensor:
    if isinstance(result, list):  # K separate Captum calls
        return torch.stack([_map(r) for r in result], dim=1)
    return (result[0] if isinstance(result, tuple) else result).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4, help="examples per call (N)")
    parser.add_argument("--steps", type=int, default=32, help="n_steps of Layer IG and Layer Conductance")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per pass (Captum's internal_batch_size)")
    parser.add_argument("--tokens", type=int, default=64, help="text length T")
    parser.add_argument("--targets", type=int, default=3, help="K for the multi-target rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from captum.attr import LayerActivation as CaptumLA
    from captum.attr import LayerConductance as CaptumLC
    from captum.attr import LayerGradientXActivation as CaptumLGXA
    from captum.attr import LayerIntegratedGradients as CaptumLIG

    device = torch.device(args.device)
    torch.manual_seed(0)
    n, steps, b, k = args.batch, args.steps, args.batch_size, args.targets
    resnet = torchvision.models.resnet18(weights=None).eval().to(device)
    text = TextModel().eval().to(device)
    images = torch.randn(n, 3, 64, 64, device=device)
    ids = torch.randint(1, 5000, (n, args.tokens), device=device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"# N={n}, n_steps={steps}, batch_size={b}, K={k}, device={device} ({where}), torch {torch.__version__}, "
        f"median of {args.repeats} runs\n"
    )
    print("| model | method | attrib (ms) | captum (ms) | captum / attrib | max diff / max |")
    print("|---|---|---:|---:|---:|---:|")

    def row(model: str, name: str, ours: Callable[[], Any], theirs: Callable[[], Any]) -> None:
        t = timed({"ours": ours, "theirs": theirs}, args.repeats, device)
        a, c = _map(ours()).double(), _map(theirs()).double()
        diff = float((a - c).abs().max() / c.abs().max())
        print(
            f"| {model} | {name} | {1e3 * t['ours']:.1f} | {1e3 * t['theirs']:.1f} | "
            f"{t['theirs'] / t['ours']:.2f} | {diff:.1e} |"
        )

    targets = torch.arange(n, device=device) % 1000
    multi = torch.stack([(targets + j) % 1000 for j in range(k)], dim=1)
    layer = resnet.layer3
    path = {"n_steps": steps, "method": "gausslegendre"}
    for label, model, x, module, name, t, t_multi, base in (
        ("ResNet-18 64 px", resnet, images, layer, "layer3", targets, multi, None),
        (f"Embedding+LSTM, T={args.tokens}", text, ids, text.embedding, "embedding", targets % 2, multi % 2, 0),
    ):
        row(
            label,
            "LayerActivation",
            lambda m=model, x=x, name=name: LayerActivation(m, name).attribute(x),
            lambda m=model, x=x, module=module: CaptumLA(m, module).attribute(x),
        )
        row(
            label,
            "LayerGradientXActivation",
            lambda m=model, x=x, name=name, t=t: LayerGradientXActivation(m, name).attribute(x, t),
            lambda m=model, x=x, module=module, t=t: CaptumLGXA(m, module).attribute(x, target=t),
        )
        captum_base = None if base is None else torch.full_like(x, base)
        row(
            label,
            f"LayerIntegratedGradients, {steps} steps",
            lambda m=model, x=x, name=name, t=t, base=base: LayerIntegratedGradients(m, name).attribute(
                x, t, baselines=base, batch_size=b, **path
            ),
            lambda m=model, x=x, module=module, t=t, cb=captum_base: CaptumLIG(m, module).attribute(
                x, baselines=cb, target=t, internal_batch_size=b, **path
            ),
        )
        row(
            label,
            f"LayerIntegratedGradients, {steps} steps, {k} targets",
            lambda m=model, x=x, name=name, t=t_multi, base=base: LayerIntegratedGradients(m, name).attribute(
                x, t, baselines=base, batch_size=b, **path
            ),
            lambda m=model, x=x, module=module, t=t_multi, cb=captum_base: [
                CaptumLIG(m, module).attribute(x, baselines=cb, target=t[:, j], internal_batch_size=b, **path)
                for j in range(k)
            ],
        )
        if x.is_floating_point():  # conductance interpolates the inputs: not for token ids
            row(
                label,
                f"LayerConductance, {steps} steps",
                lambda m=model, x=x, name=name, t=t: LayerConductance(m, name).attribute(x, t, batch_size=b, **path),
                lambda m=model, x=x, module=module, t=t: CaptumLC(m, module).attribute(
                    x, target=t, internal_batch_size=b, **path
                ),
            )


if __name__ == "__main__":
    main()
