"""The shipped localisation benchmark: synthetic images with known object masks and two trained networks.

* :func:`make_shapes` draws images with one to three objects of distinct
  classes (:data:`CLASSES`), distractors, per-class masks, multi-label labels
  and the pointing game's "difficult" flags, deterministically from a seed.
* :func:`load_model` loads a shipped network (``"shapes-cnn"``,
  ``"shapes-resnet"``) from the float16 weights in this package, with no download.
  The weights come from ``scripts/train_models.py``; on 2,000 fresh images
  (``make_shapes(2000, seed=7)``, a seed never used in training) they reach
  the accuracies in :data:`STATED_ACCURACY`.
* :func:`make_sequences` draws padded synthetic sentiment sequences whose
  deciding tokens are known (:mod:`attrib.data.text`), and
  ``load_model("text-classifier")`` loads the small transformer trained on
  them by ``scripts/train_text_classifier.py``
  (:class:`~attrib.data.text_model.TextClassifier`, logits over
  :data:`LABELS`), stated accuracy on ``make_sequences(5000, seed=7)``.

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
from .text import LABELS, PAD_ID, VOCAB, SequenceBatch, decode, encode, make_sequences
from .text_model import TEXT_MODEL_NAME, TextClassifier

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

STATED_ACCURACY: dict[str, dict[str, float]] = {
    "shapes-cnn": {"exact_match": 0.988, "per_label": 0.997},
    "shapes-resnet": {"exact_match": 0.962, "per_label": 0.992},
    "text-classifier": {"accuracy": 0.999},
}
"""Accuracy of each shipped model on fresh data (seed 7, never used in training). Image models, on
``make_shapes(2000, seed=7)``: ``exact_match`` (every label of an image right, logit > 0 meaning present)
and ``per_label`` (share of right (image, class) decisions). The text classifier, on
``make_sequences(5000, seed=7)``: ``accuracy`` (argmax of the logits equal to the label)."""


def load_model(name: str = "shapes-cnn") -> nn.Module:
    """The shipped network ``name`` with its trained weights, in eval mode (float32, CPU).

    ``"shapes-cnn"`` and ``"shapes-resnet"`` take images (:func:`make_shapes`); ``"text-classifier"``
    takes token ids and an optional attention mask (:func:`make_sequences`).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the weights file is missing from the installation.
    """
    if name not in MODEL_NAMES and name != TEXT_MODEL_NAME:
        raise ValueError(
            f"unknown shipped model {name!r}; choose from {', '.join((*MODEL_NAMES, TEXT_MODEL_NAME))}"
        )
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        script = "train_text_classifier.py" if name == TEXT_MODEL_NAME else "train_models.py"
        raise FileNotFoundError(f"the weights of {name} are missing ({path}); reinstall attrib or run "
                                f"scripts/{script}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = TextClassifier() if name == TEXT_MODEL_NAME else build(name)
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
    "LABELS",
    "MODEL_NAMES",
    "PAD_ID",
    "STATED_ACCURACY",
    "SequenceBatch",
    "ShapesBatch",
    "ShapesCNN",
    "ShapesResNet",
    "TEXT_MODEL_NAME",
    "TextClassifier",
    "VOCAB",
    "accuracy",
    "decode",
    "encode",
    "load_model",
    "make_sequences",
    "make_shapes",
]
