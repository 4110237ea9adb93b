"""The shipped localisation benchmark: synthetic images with known object masks and two trained networks.

* :func:`make_shapes` draws images with one to three objects of distinct
  classes (:data:`CLASSES`), distractors, per-class masks, multi-label labels
  and the pointing game's "difficult" flags, deterministically from a seed.
* :func:`load_model` loads a shipped network (``"shapes-cnn"``,
  ``"shapes-resnet"``) from the float16 weights in this package, with no download.
  The weights come from ``scripts/train_models.py``; on 2,000 fresh images
  (``make_shapes(2000, seed=7)``, a seed never used in training) they reach
  the accuracies in :data:`STATED_ACCURACY`.

Example:
    >>> from attrib.data import make_shapes, load_model
    >>> batch = make_shapes(16, seed=0)
    >>> model = load_model("shapes-cnn")
    >>> present = model(batch.images) > 0          # (16, 5) multi-label prediction
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .models import MODEL_NAMES, ShapesCNN, ShapesResNet, build
from .shapes import CLASSES, IMAGE_SIZE, ShapesBatch, make_shapes

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

STATED_ACCURACY: dict[str, dict[str, float]] = {
    "shapes-cnn": {"exact_match": 0.988, "per_label": 0.997},
    "shapes-resnet": {"exact_match": 0.962, "per_label": 0.992},
}
"""Accuracy of each shipped model on ``make_shapes(2000, seed=7)``: ``exact_match`` (every label of an
image right, logit > 0 meaning present) and ``per_label`` (share of right (image, class) decisions)."""


def load_model(name: str = "shapes-cnn") -> nn.Module:
    """The shipped network ``name`` with its trained weights, in eval mode (float32, CPU).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights file is missing from the installation.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown shipped model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"the weights of {name} are missing ({path}); reinstall attrib or run "
                                "scripts/train_models.py")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build(name)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batch: ShapesBatch, *, batch_size: int = 256) -> tuple[float, float]:
    """``(exact_match, per_label)`` accuracy of ``model`` on ``batch`` (a logit > 0 means present)."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(batch.images[i : i + batch_size]) for i in range(0, len(batch), batch_size)])
    finally:
        model.train(was_training)
    right: Tensor = (logits > 0) == batch.labels
    return float(right.all(1).float().mean()), float(right.float().mean())


__all__ = [
    "CLASSES",
    "IMAGE_SIZE",
    "MODEL_NAMES",
    "STATED_ACCURACY",
    "ShapesBatch",
    "ShapesCNN",
    "ShapesResNet",
    "accuracy",
    "load_model",
    "make_shapes",
]
