"""The shipped benchmark data (generator) and models (weights, stated accuracy)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.data import (
    CLASSES,
    MODEL_NAMES,
    STATED_ACCURACY,
    WEIGHTS_DIR,
    accuracy,
    load_model,
    make_shapes,
)
from attrib.data.models import ShapesCNN, ShapesResNet


def _equal(a: object, b: object) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("images", "masks", "labels", "difficult"))


@settings(max_examples=6)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6))
def test_generator_is_deterministic_and_leaves_global_rng_alone(seed: int, n: int) -> None:
    state = torch.get_rng_state()
    first = make_shapes(n, seed=seed)
    second = make_shapes(n, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)
    assert _equal(first, second)
    # a batch is a prefix-independent function of its seed: another seed gives other images
    assert not torch.equal(make_shapes(n, seed=seed + 1).images, first.images)


def test_generator_shapes_and_ground_truth_are_consistent() -> None:
    batch = make_shapes(64, seed=5)
    n, c = 64, len(CLASSES)
    assert batch.images.shape == (n, 3, 64, 64) and batch.images.dtype == torch.float32
    assert batch.masks.shape == (n, c, 64, 64) and batch.masks.dtype == torch.bool
    assert batch.labels.shape == (n, c) and batch.difficult.shape == (n, c)
    assert 0 <= float(batch.images.min()) and float(batch.images.max()) <= 1
    counts = batch.labels.sum(1)
    assert int(counts.min()) >= 1 and int(counts.max()) <= 3
    assert int((counts >= 2).sum()) > n // 3  # several objects per image are common
    # a label is set exactly where the class is visible; a pixel belongs to at most one class
    assert torch.equal(batch.labels, batch.masks.flatten(2).any(2))
    assert int(batch.masks.sum(1).max()) <= 1
    # difficult (Zhang et al.): present, under a quarter of the image, another class present
    area = batch.masks.flatten(2).float().mean(2)
    expected = batch.labels & (area < 0.25) & (counts.unsqueeze(1) >= 2)
    assert torch.equal(batch.difficult, expected)
    image, cls = batch.pairs()
    assert image.numel() == int(batch.labels.sum()) and bool(batch.labels[image, cls].all())


def test_generator_options_and_bad_arguments() -> None:
    single = make_shapes(16, seed=1, max_objects=1, distractors=0)
    assert bool((single.labels.sum(1) == 1).all()) and not bool(single.difficult.any())
    assert make_shapes(2, seed=1, size=32).images.shape == (2, 3, 32, 32)
    for kwargs in (
        {"n": 0},
        {"n": 2, "max_objects": 0},
        {"n": 2, "max_objects": 9},
        {"n": 2, "size": 8},
        {"n": 2, "distractors": -1},
    ):
        with pytest.raises(ValueError):
            make_shapes(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        make_shapes(2, seed=1.5)  # type: ignore[arg-type]


def test_weights_are_small_half_precision_and_architectures_as_documented() -> None:
    files = [WEIGHTS_DIR / f"{name}.pt" for name in MODEL_NAMES]
    assert sum(f.stat().st_size for f in files) < 5_000_000
    for f in files:
        state = torch.load(f, weights_only=True)
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    cnn, resnet = load_model("shapes-cnn"), load_model("shapes-resnet")
    assert isinstance(cnn, ShapesCNN) and isinstance(resnet, ShapesResNet)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert any(isinstance(m, nn.ReLU) and m.inplace for m in resnet.modules())
    assert not cnn.training and all(p.dtype == torch.float32 for p in cnn.parameters())
    with pytest.raises(ValueError, match="shapes-cnn"):
        load_model("shapes-vgg")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_models_reach_their_stated_accuracy(name: str) -> None:
    # STATED_ACCURACY is measured on make_shapes(2000, seed=7); fresh images from a seed used neither in
    # training nor for that measurement reach it within three standard errors of a 500-image estimate
    exact, per_label = accuracy(load_model(name), make_shapes(500, seed=424242))
    stated = STATED_ACCURACY[name]
    assert exact >= stated["exact_match"] - 0.06
    assert per_label >= stated["per_label"] - 0.03
