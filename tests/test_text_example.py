"""examples/text_classifier.py: the methods find the tokens that decide the shipped text classifier's label."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attrib.data import PAD_ID, load_model, make_sequences

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "text_classifier.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("text_classifier_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_ranks_the_deciding_tokens_first(example: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    report = example.main(["--n", "24", "--n-samples", "10", "--n-steps", "64", "--show", "1", "--seed", "5"])
    out = capsys.readouterr().out
    assert "sequence 0" in out and "top-1 is deciding" in out and " *" in out
    # a random ranking puts a deciding token first for about 1 sequence in 6 (2.4 of 15 tokens)
    for name in ("ablation", "shapley", "lig"):
        assert report[name]["top1"] >= 0.9, (name, report[name])
        assert report[name]["precision_at_k"] >= 0.7, (name, report[name])
    assert report["lig"]["completeness_gap"] < 0.05


def test_example_scores_are_the_methods_definitions(example: ModuleType) -> None:
    # the wiring (pad baselines, mask through additional_forward_args, target, per-token sums) checked
    # against the definitions, one token at a time
    model = load_model("text-classifier")
    data = make_sequences(3, seed=2, max_length=12)
    ids, mask = data.input_ids, data.attention_mask
    target = torch.tensor([0, 1, 1])
    scores = {name: f(ids, mask, target) for name, f in example.methods(
        model, n_samples=4, n_steps=64, batch_size=7).items()}
    with torch.no_grad():
        clean = model(ids, mask).gather(1, target[:, None])[:, 0]
        empty = model(torch.full_like(ids, PAD_ID), mask).gather(1, target[:, None])[:, 0]
        for t in range(ids.shape[1]):
            ablated = ids.clone()
            ablated[:, t] = PAD_ID
            drop = clean - model(ablated, mask).gather(1, target[:, None])[:, 0]
            torch.testing.assert_close(scores["ablation"][:, t], drop, rtol=1e-4, atol=1e-5)
    # Shapley is efficient and LIG complete (up to quadrature error) against the all-<pad> sequence
    torch.testing.assert_close(scores["shapley"].sum(1), clean - empty, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores["lig"].sum(1), clean - empty, rtol=0, atol=2e-2)
    assert not bool(scores["ablation"][~mask].any())  # ablating a <pad> by <pad> changes nothing
    assert float(scores["shapley"][~mask].abs().max()) < 1e-5  # nor does adding one (up to row-wise rounding)


def test_agreement_counts_top1_and_precision_at_k(example: ModuleType) -> None:
    scores = torch.tensor([[0.1, 3.0, 2.0, 9.0], [5.0, 1.0, 0.0, -1.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    deciding = torch.tensor([[False, True, False, False], [False, True, False, True]])
    top1, precision = example.agreement(scores, mask, deciding)
    assert top1.tolist() == [True, False]  # the padded 9.0 does not count
    assert precision.tolist() == [1.0, 0.5]
