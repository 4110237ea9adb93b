"""ParameterRandomization (on a deep copy), rank correlations, and Sparseness (Gini)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import attrib
from attrib.layer_attribution import LayerAttribution
from attrib.metrics.randomization import ParameterRandomization, layers_with_parameters, randomize_
from attrib.metrics.similarity import average_ranks, pearson, spearman
from attrib.metrics.sparseness import Sparseness
from attrib.targets import resolve_target

from .models import SmoothNet, inputs_for, reinitialise


class TwoHeads(nn.Module):
    """A body and two heads; the output is both heads' logits side by side (classes 0-2 and 3-5)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head_a = nn.Linear(8, 3)
        self.head_b = nn.Linear(8, 3)
        reinitialise(self, 0, scale=1.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        return torch.cat([self.head_a(h), self.head_b(h)], dim=1)


class ActivationTimesGradient(LayerAttribution):
    """A minimal layer method (for the deep-copy protocol): activation x gradient at ``layer``."""

    def attribute(self, inputs, target=None, **kwargs):
        with self._guard():
            resolved = resolve_target(target, inputs.shape[0])
            activation, grad = self._layer_gradients((inputs,), (), resolved, torch.arange(inputs.shape[0]))
        return activation * grad


def snapshot(model: nn.Module):
    return copy.deepcopy(model.state_dict()), [p.requires_grad for p in model.parameters()], model.training


def assert_same(model: nn.Module, saved) -> None:
    state, flags, training = saved
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training == training


def test_layer_whose_randomisation_changes_nothing_correlates_exactly():
    model = TwoHeads()
    x = inputs_for((6,), 5, 0)
    target = torch.tensor([0, 1, 2, 0, 1])  # classes of head_a: head_b does not touch their gradients
    saved = snapshot(model)
    for mode in ("cascading", "independent"):
        test = ParameterRandomization(attrib.Saliency(model), x, target, mode=mode, seed=0)
        assert test.layers == ["head_b", "head_a", "body"]  # top-down
        result = test()
        assert list(result) == ["head_b", "head_a", "body"]
        torch.testing.assert_close(result["head_b"], torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
        assert bool((result["head_a"] < 0.999).all()) and bool((result["body"] < 0.999).all())
        assert_same(model, saved)


def test_users_model_and_method_untouched_bit_exact():
    model = SmoothNet().train()
    model.l1.bias.requires_grad_(False)
    saved = snapshot(model)
    method = attrib.IntegratedGradients(model)
    rng = torch.get_rng_state()
    result = ParameterRandomization(method, inputs_for((6,), 3, 0), 1, seed=3, attribute_options={"n_steps": 4})()
    assert torch.equal(torch.get_rng_state(), rng)
    assert set(result) == {"l1", "l2"} and all(r.shape == (3,) for r in result.values())
    assert method.model is model
    assert_same(model, saved)


def test_layer_method_is_rebuilt_on_the_copy():
    model = TwoHeads()
    x = inputs_for((6,), 4, 1)
    method = ActivationTimesGradient(model, "body")
    saved = snapshot(model)
    result = ParameterRandomization(method, x, 0, mode="independent", seed=0, layers=["head_a", "head_b", "body"])()
    # The copied hook must sit in the copy: randomising the head changes the gradient at the body.
    assert bool((result["head_a"] < 0.999).all())
    torch.testing.assert_close(result["head_b"], torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((result["body"] < 0.999).all())
    assert method.layer is model.body
    assert_same(model, saved)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_matches_a_step_by_step_reference(mode):
    # Re-do the test by hand on a copy: randomise with the same draws (cumulatively or one layer at a time),
    # explain, and correlate the absolute maps with the reference Spearman.
    model = SmoothNet()
    x = inputs_for((6,), 3, 2)
    target = torch.tensor([0, 2, 1])
    ours = ParameterRandomization(attrib.Saliency(model), x, target, mode=mode, seed=9)()
    g = torch.Generator().manual_seed(9)
    copy_ = copy.deepcopy(model)
    original = attrib.Saliency(model).attribute(x, target).abs()
    for name in ["l2", "l1"]:
        module = getattr(copy_, name)
        before = copy.deepcopy(module.state_dict())
        randomize_(module, g)
        bound = 1 / math.sqrt(module.weight.shape[1])
        assert all(float(p.detach().abs().max()) <= bound for p in module.parameters())  # default init scale
        randomized = attrib.Saliency(copy_).attribute(x, target).abs()
        expected = [reference_spearman(a.tolist(), b.tolist()) for a, b in zip(original, randomized)]
        torch.testing.assert_close(ours[name], torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        if mode == "independent":
            module.load_state_dict(before)


def test_seeded_and_modes_differ():
    model = SmoothNet()
    x = inputs_for((6,), 4, 0)
    method = attrib.Saliency(model)
    metric = ParameterRandomization(method, x, 0, seed=5)
    a = metric()
    b = metric()  # a seed gives the same draws on every call
    c = ParameterRandomization(method, x, 0, seed=6)()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    independent = ParameterRandomization(method, x, 0, seed=5, mode="independent")()
    torch.testing.assert_close(independent["l2"], a["l2"])  # the first layer randomised is the same in both modes
    assert not torch.equal(independent["l1"], a["l1"])  # cascading keeps l2 random while l1 is randomised


def test_given_maps_pearson_and_top1_target():
    model = SmoothNet()
    x = inputs_for((6,), 4, 0)
    method = attrib.Saliency(model)
    top = model(x).argmax(1)
    via_none = ParameterRandomization(method, x, None, seed=1, similarity="pearson")()
    given_maps = ParameterRandomization(method, x, top, seed=1, similarity="pearson")(method.attribute(x, top))
    assert all(torch.equal(via_none[k], given_maps[k]) for k in via_none)


def test_bad_arguments():
    model = SmoothNet()
    x = inputs_for((6,), 2, 0)
    method = attrib.Saliency(model)
    with pytest.raises(ValueError, match="mode"):
        ParameterRandomization(method, x, 0, mode="random")
    with pytest.raises(ValueError, match="similarity"):
        ParameterRandomization(method, x, 0, similarity="ssim")
    with pytest.raises(ValueError, match="l3"):
        ParameterRandomization(method, x, 0, layers=["l3"])
    with pytest.raises(ValueError, match="none given"):
        ParameterRandomization(method, x, 0, layers=[])
    with pytest.raises(TypeError, match="sequence"):
        ParameterRandomization(method, x, 0, layers="l1")
    with pytest.raises(ValueError, match="no parameters"):
        ParameterRandomization(attrib.Saliency(nn.Tanh()), x, 0)
    with pytest.raises(ValueError, match="one row per example"):
        ParameterRandomization(method, x, 0, seed=0)(torch.zeros(3, 6))
    with pytest.raises(TypeError, match="Attribution"):
        ParameterRandomization(model, x, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attribute_options"):
        ParameterRandomization(method, x, 0, attribute_options=[("abs", True)])  # type: ignore[arg-type]
    assert layers_with_parameters(model) == ["l1", "l2"]


# --- rank correlation -----------------------------------------------------------------


def reference_spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den


@settings(max_examples=20)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(-3, 3), min_size=6, max_size=6), st.lists(st.integers(-3, 3), min_size=6, max_size=6)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_spearman_with_ties_matches_the_reference(rows):
    a = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    b = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    ours = spearman(a, b)
    for i, (x, y) in enumerate(rows):
        if len(set(x)) == 1 or len(set(y)) == 1:
            assert math.isnan(float(ours[i]))  # a constant map has no ranking
        else:
            assert math.isclose(float(ours[i]), reference_spearman(x, y), abs_tol=1e-12)


def test_average_ranks_and_pearson():
    assert average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[2.5, 0.0, 2.5, 1.0]]
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 4.0]])
    assert pearson(a, 2 * a + 1).tolist() == pytest.approx([1.0, 1.0])
    assert pearson(a, -a).tolist() == pytest.approx([-1.0, -1.0])
    assert math.isnan(float(spearman(torch.tensor([[1.0, float("nan")]]), torch.tensor([[1.0, 2.0]]))[0]))


# --- sparseness -----------------------------------------------------------------------


def reference_gini(values: list[float]) -> float:
    v = sorted(abs(x) for x in values)
    m, total = len(v), sum(abs(x) for x in values)
    if total == 0:
        return 0.0
    return sum((2 * (i + 1) - m - 1) * x for i, x in enumerate(v)) / (m * total)


def test_sparseness_hand_values():
    sparse = Sparseness()
    maps = torch.zeros(3, 1, 2, 2)
    maps[0] = 1.0  # uniform
    maps[1, 0, 1, 0] = -5.0  # one-hot (sign ignored)
    scores = sparse(maps)
    assert scores.tolist() == [0.0, 0.75, 0.0]  # (M - 1) / M = 3 / 4; all-zero -> 0
    assert sparse.higher_is_better
    assert math.isnan(float(sparse(torch.tensor([[1.0, float("nan")]]))[0]))
    # Tuple maps: every input's entries form one vector.
    torch.testing.assert_close(sparse((maps[:, :, 0], maps[:, :, 1])), scores)


@settings(max_examples=20)
@given(
    values=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30),
    scale=st.floats(1e-3, 1e3),
)
def test_sparseness_range_scale_invariance_and_reference(values, scale):
    maps = torch.tensor([values], dtype=torch.float64)
    g = Sparseness()(maps)
    assert 0.0 <= float(g[0]) <= 1.0
    assert math.isclose(float(g[0]), reference_gini(values), rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(float(Sparseness()(scale * maps)[0]), float(g[0]), rel_tol=1e-9, abs_tol=1e-12)
    perm = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(Sparseness()(maps[:, perm])[0]), float(g[0]), rel_tol=1e-9, abs_tol=1e-12)
