"""The CAM family: float64 references, properties, token layouts, layer=None, state and errors."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attrib.core.tokens import infer_layout
from attrib.methods.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, LinearApprox, XGradCAM
from attrib.methods.eigen_cam import EigenCAM
from attrib.methods.guided_grad_cam import GuidedGradCAM
from attrib.methods.modified_backprop import GuidedBackprop
from attrib.methods.score_cam import AblationCAM, ScoreCAM
from attrib.postprocess import Resize

from . import reference_cam as ref
from .models import Spec, build, inputs_for, reinitialise
from .test_state import Tripwire, assert_same, snapshot, untidy

GRADIENT_CAMS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "gradcam++": GradCAMPlusPlus,
    "layercam": LayerCAM,
    "linear_approx": LinearApprox,
}
ALL_CAMS = {**GRADIENT_CAMS, "scorecam": ScoreCAM, "ablationcam": AblationCAM, "eigencam": EigenCAM}


def cnn(seed: int = 0, style: str = "module", size: int = 8, classes: int = 5) -> nn.Sequential:
    """conv(3->4), relu, conv(4->6), relu, maxpool, flatten, linear: layer "2" is pre-ReLU, "3" post-ReLU."""
    return build(Spec(3, size, (4, 6), (False, True), (), classes, (style,) * 4, seed))


# Float64 references ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRADIENT_CAMS))
@pytest.mark.parametrize("layer", ["2", "3"])
def test_gradient_cams_match_float64_reference(name, layer):
    model = cnn(seed=1)
    x = inputs_for((3, 8, 8), 3, seed=2)
    targets = [0, 3, 4]
    expected = ref.gradient_cams(name, model, layer, x, targets, relu=name != "linear_approx")
    ours = GRADIENT_CAMS[name](model.double(), layer).attribute(x.double(), target=targets)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    # and in float32, against the same float64 reference
    ours32 = GRADIENT_CAMS[name](model.float(), layer).attribute(x, target=targets)
    torch.testing.assert_close(ours32.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "xgradcam", "gradcam++"])
def test_relu_false_keeps_signs(name):
    model = cnn(seed=3).double()
    x = inputs_for((3, 8, 8), 2, seed=4, dtype=torch.float64)
    expected = ref.gradient_cams(name, model, "2", x, [1, 2], relu=False)
    ours = GRADIENT_CAMS[name](model, "2").attribute(x, target=[1, 2], relu=False)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    assert (ours < 0).any(), "the pre-ReLU layer should give some negative evidence"
    torch.testing.assert_close(GRADIENT_CAMS[name](model, "2").attribute(x, target=[1, 2]), ours.clamp(min=0))


def test_gradcam_plus_plus_eps_matches_reference():
    model = cnn(seed=5).double()
    x = inputs_for((3, 8, 8), 2, seed=6, dtype=torch.float64)
    expected = ref.gradient_cams("gradcam++", model, "3", x, [0, 1], eps=1e-3)
    ours = GradCAMPlusPlus(model, "3", eps=1e-3).attribute(x, target=[0, 1])
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        GradCAMPlusPlus(model, "3", eps=-1.0)


@pytest.mark.parametrize("layer", ["2", "3"])
def test_score_cam_matches_float64_reference(layer):
    model = cnn(seed=7)
    x = inputs_for((3, 8, 8), 2, seed=8)
    expected = ref.score_cam(model, layer, x, [1, 4])
    ours = ScoreCAM(model.double(), layer).attribute(x.double(), target=[1, 4], batch_size=5)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_ablation_cam_matches_float64_reference():
    model = cnn(seed=9)
    x = inputs_for((3, 8, 8), 2, seed=10)
    expected = ref.ablation_cam(model, "3", x, [0, 2])
    ours = AblationCAM(model.double(), "3").attribute(x.double(), target=[0, 2], batch_size=4)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


def test_eigen_cam_matches_float64_reference_and_ignores_the_target():
    model = cnn(seed=11).double()
    x = inputs_for((3, 8, 8), 3, seed=12, dtype=torch.float64)
    expected = ref.eigen_cam(model, "3", x)
    method = EigenCAM(model, "3")
    torch.testing.assert_close(method.attribute(x, relu=False), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(method.attribute(x, target=[0, 1, 2]), expected.clamp(min=0))
    multi = method.attribute(x, target=torch.tensor([[0, 1]] * 3))
    assert multi.shape == (3, 2, 1, 8, 8)
    torch.testing.assert_close(multi[:, 1], expected.clamp(min=0))


def test_guided_grad_cam_is_the_product_of_its_factors():
    model = cnn(seed=13)
    x = inputs_for((3, 8, 8), 2, seed=14)
    ours = GuidedGradCAM(model, "3").attribute(x, target=[1, 2])
    cam = torch.nn.functional.interpolate(
        GradCAM(model, "3").attribute(x, target=[1, 2]), size=(8, 8), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(ours, GuidedBackprop(model).attribute(x, target=[1, 2]) * cam)
    assert "GuidedBackprop" in repr(GuidedGradCAM(model, "3")) and "Resize" in repr(GuidedGradCAM(model, "3"))


# Properties ---------------------------------------------------------------------------


class ReadChannel(nn.Module):
    """Logits (beta * sum A_j, -beta * sum A_j): a linear read of channel j."""

    def __init__(self, j: int, beta: float) -> None:
        super().__init__()
        self.j, self.beta = j, beta

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        s = self.beta * a[:, self.j].flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**16),
    channels=st.integers(1, 5),
    j=st.integers(0, 4),
    beta=st.floats(0.1, 3.0) | st.floats(-3.0, -0.1),
    size=st.integers(2, 6),
)
def test_grad_cam_of_a_linear_read_of_one_channel_is_that_channel(seed, channels, j, beta, size):
    j = j % channels
    model = reinitialise(nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), ReadChannel(j, beta)), seed).double()
    x = inputs_for((2, size, size), 2, seed, dtype=torch.float64)
    a = model[0](x)[:, j : j + 1].detach()
    for target, sign in ((0, 1.0), (1, -1.0)):
        scaled = sign * beta * a
        torch.testing.assert_close(GradCAM(model, "0").attribute(x, target=target), scaled.clamp(min=0))
        torch.testing.assert_close(GradCAM(model, "0").attribute(x, target=target, relu=False), scaled)
        torch.testing.assert_close(HiResCAM(model, "0").attribute(x, target=target), scaled.clamp(min=0))
        torch.testing.assert_close(LinearApprox(model, "0").attribute(x, target=target), scaled)


def _options(name: str) -> dict:
    return {"batch_size": 3} if name in ("scorecam", "ablationcam") else {}


@pytest.mark.parametrize("name", sorted(ALL_CAMS))
@settings(max_examples=3)
@given(
    seed=st.integers(0, 2**16), n=st.integers(1, 3), k=st.integers(1, 3), style=st.sampled_from(["module", "tensor"])
)
def test_multi_target_equals_per_target(name, seed, n, k, style):
    model = cnn(seed, style)
    x = inputs_for((3, 8, 8), n, seed)
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 5, (n, k), generator=g)
    method = ALL_CAMS[name](model, "3")
    multi = method.attribute(x, target=targets, **_options(name))
    assert multi.shape == (n, k, 1, 8, 8)
    for j in range(k):
        torch.testing.assert_close(multi[:, j], method.attribute(x, target=targets[:, j], **_options(name)))


@pytest.mark.parametrize("name", sorted(ALL_CAMS))
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 4), batch_size=st.integers(1, 7))
def test_results_do_not_depend_on_batch_size(name, seed, n, batch_size):
    model = cnn(seed).double()
    x = inputs_for((3, 8, 8), n, seed, dtype=torch.float64)
    method = ALL_CAMS[name](model, "2")
    whole = method.attribute(x, target=1)
    torch.testing.assert_close(method.attribute(x, target=1, batch_size=batch_size), whole)
    torch.testing.assert_close(method.attribute(x, target=1, batch_size="auto"), whole)


@pytest.mark.parametrize("name", sorted(ALL_CAMS))
@settings(max_examples=3)
@given(seed=st.integers(0, 2**16), fail_at=st.integers(0, 3), n=st.integers(1, 2))
def test_state_restored_after_success_and_injected_failure(name, seed, fail_at, n):
    inner = cnn(seed)
    model = nn.Sequential(*list(inner)[:4], Tripwire(fail_at), *list(inner)[4:])
    untidy(model, seed)
    x = inputs_for((3, 8, 8), n, seed).requires_grad_(seed % 2 == 0)
    before = snapshot(model, (x,))
    rng = torch.random.get_rng_state()
    try:
        ALL_CAMS[name](model, "3").attribute(x, target=0, **_options(name))
    except RuntimeError as err:
        assert "injected failure" in str(err)
    assert_same(before, snapshot(model, (x,)))
    assert torch.equal(rng, torch.random.get_rng_state())


def test_methods_are_deterministic():
    model = cnn(seed=15)
    x = inputs_for((3, 8, 8), 2, seed=15)
    for cls in ALL_CAMS.values():
        method = cls(model, "3")
        assert torch.equal(method.attribute(x, target=1), method.attribute(x, target=1))


# Token layouts -------------------------------------------------------------------------


def small_vit(seed: int = 0, image_size: int = 32) -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )
    return reinitialise(model, seed, scale=1.0).eval()  # torchvision zeroes the head: every gradient would be 0


def small_swin(seed: int = 0) -> nn.Module:
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2], num_classes=4
    )
    return reinitialise(model, seed, scale=1.0).eval()


def _manual_grad_cam(model: nn.Module, layer: str, x: torch.Tensor, target: int, to_grid) -> torch.Tensor:
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, out: store.setdefault("a", out))
    out = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(out[:, target].sum(), store["a"])
    a, g = to_grid(store["a"].detach()), to_grid(grad)
    return (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)


def test_vit_tokens_drop_the_class_token_and_form_the_grid():
    model = small_vit()
    x = inputs_for((3, 32, 32), 2, 0)
    layer = "encoder.layers.encoder_layer_1.ln_1"
    ours = GradCAM(model, layer).attribute(x, target=2)
    expected = _manual_grad_cam(model, layer, x, 2, lambda t: t[:, 1:].transpose(1, 2).reshape(2, 16, 4, 4))
    torch.testing.assert_close(ours, expected)
    assert (ours > 0).any()


def test_non_square_vit_grid_from_the_input_aspect():
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )
    layout = infer_layout("x", (2, 1 + 2 * 6, 16), (2, 3, 16, 48), model)
    assert (layout.kind, layout.prefix, layout.grid) == ("tokens", 1, (2, 6))


def test_swin_channels_last_is_detected():
    model = small_swin()
    x = inputs_for((3, 32, 32), 2, 1)
    ours = GradCAM(model, "features.1").attribute(x, target=1)
    expected = _manual_grad_cam(model, "features.1", x, 1, lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(ours, expected)
    assert ours.shape == (2, 1, 8, 8)


def test_ambiguous_square_map_uses_the_layer_norm_hint():
    ln = nn.Sequential(nn.LayerNorm(8))
    assert infer_layout("s", (1, 8, 8, 8), (1, 3, 32, 32), ln).kind == "channels_last"
    assert infer_layout("c", (1, 8, 8, 8), (1, 3, 32, 32), nn.Conv2d(3, 8, 1)).kind == "channels_first"


class PrefixTokens(nn.Module):
    """Patch embedding with two prefix tokens (class + distillation), then a token mixer and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 2, 6))
        self.tokens = nn.Identity()
        self.mix = nn.Linear(18, 18)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = self.tokens(torch.cat([self.prefix.expand(x.shape[0], -1, -1), t], dim=1))
        t = torch.tanh(self.mix(t.transpose(1, 2)).transpose(1, 2))
        return self.head(t[:, 0])


def test_unreadable_layout_names_reshape_and_reshape_fixes_it():
    model = reinitialise(PrefixTokens(), 0, scale=1.0).eval()
    x = inputs_for((3, 16, 16), 2, 2)
    with pytest.raises(ValueError, match="reshape="):
        GradCAM(model, "tokens").attribute(x, target=0)

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 2:].transpose(1, 2).reshape(t.shape[0], t.shape[2], 4, 4)

    ours = GradCAM(model, "tokens", reshape=reshape).attribute(x, target=0)
    torch.testing.assert_close(ours, _manual_grad_cam(model, "tokens", x, 0, reshape))
    ablation = AblationCAM(model, "tokens", reshape=reshape).attribute(x, target=0)
    assert ablation.shape == (2, 1, 4, 4) and torch.isfinite(ablation).all()
    with pytest.raises(ValueError, match="rearrange"):
        AblationCAM(model, "tokens", reshape=lambda t: reshape(t) * 2).attribute(x, target=0)
    with pytest.raises(TypeError, match="reshape"):
        GradCAM(model, "tokens", reshape=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(ALL_CAMS))
def test_every_cam_runs_on_vit_and_swin_without_user_code(name):
    for model, grid in ((small_vit(), (4, 4)), (small_swin(), (4, 4))):
        x = inputs_for((3, 32, 32), 2, 3)
        method = ALL_CAMS[name](model)
        maps = method.attribute(x, target=[0, 1], **_options(name))
        assert maps.shape == (2, 1, *grid) and torch.isfinite(maps).all()


# layer=None and errors -------------------------------------------------------------------


def test_layer_none_picks_the_last_spatial_layer_and_reports_it():
    model = torchvision.models.resnet18(num_classes=3).eval()
    method = GradCAM(model)
    assert "layer=None" in repr(method)
    with pytest.raises(RuntimeError, match="first call"):
        _ = method.layer
    maps = method.attribute(inputs_for((3, 64, 64), 1, 0), target=0)
    assert method.layer_name == "layer4" and method.layer is model.layer4
    assert repr(method) == "GradCAM(ResNet, layer=None, chose 'layer4')" and maps.shape == (1, 1, 2, 2)
    vgg_like = nn.Sequential()
    vgg_like.add_module("features", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    vgg_like.add_module("avgpool", nn.AdaptiveAvgPool2d(7))  # VGG's: upsamples a small map
    vgg_like.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(4 * 49, 3)))
    vgg_cam = GradCAM(reinitialise(vgg_like, 0).eval())
    vgg_cam.attribute(inputs_for((3, 8, 8), 1, 0), target=0)
    assert vgg_cam.layer_name == "features"  # not the adaptive pooling that only resamples it
    vit = GradCAM(small_vit())
    vit.attribute(inputs_for((3, 32, 32), 1, 0), target=0)
    assert vit.layer_name == "encoder.layers.encoder_layer_1.ln_1"  # the last layer whose patch tokens matter


def test_errors_name_the_problem():
    mlp = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="layer="):
        GradCAM(mlp).attribute(torch.randn(2, 4), target=0)
    with pytest.raises(ValueError, match="no spatial dimensions.*reshape="):
        GradCAM(mlp, "0").attribute(torch.randn(2, 4), target=0)
    with pytest.raises(ValueError, match="no layer named"):
        GradCAM(cnn(), "features.3")
    with pytest.raises(TypeError, match="nn.Module"):
        GradCAM(lambda x: x)
    with pytest.raises(ValueError, match="batch_size"):
        ScoreCAM(cnn(), "3").attribute(torch.randn(1, 3, 8, 8), batch_size=0)
    with pytest.raises(TypeError, match="ablation_value"):
        AblationCAM(cnn(), "3", ablation_value="zero")  # type: ignore[arg-type]


def test_resize_brings_maps_to_the_input_size_and_keeps_the_target_dimension():
    model = cnn(seed=16)
    x = inputs_for((3, 8, 8), 2, 16)
    maps = GradCAM(model, "3").then(Resize()).attribute(x, target=torch.tensor([[0, 1], [2, 3]]))
    assert maps.shape == (2, 2, 1, 8, 8)


# Structured model outputs -----------------------------------------------------------------


@dataclasses.dataclass
class Output:
    logits: torch.Tensor


class Structured(nn.Module):
    """``net`` whose output comes back as a dict, a tuple or a dataclass (as HuggingFace models return)."""

    def __init__(self, net: nn.Module, kind: str) -> None:
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x: torch.Tensor) -> object:
        out = self.net(x)
        if self.kind == "dict":
            return {"logits": out, "norm": out.norm(dim=1)}
        return (out, out.norm(dim=1)) if self.kind == "tuple" else Output(out)


def _logits(out: object) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out.logits


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "eigencam", "gradcam"])
@pytest.mark.parametrize("kind", ["dict", "tuple", "dataclass"])
def test_structured_outputs_reach_a_callable_target(name, kind):
    model = cnn(seed=21)
    x = inputs_for((3, 8, 8), 3, seed=22)
    expected = ALL_CAMS[name](model, "3").attribute(x, target=2, **_options(name))
    wrapped = Structured(model, kind)
    method = ALL_CAMS[name](wrapped, "net.3")
    for batch_size in (None, 2):  # one block, and blocks whose raw outputs are never concatenated
        options = {**_options(name), "batch_size": batch_size}
        ours = method.attribute(x, target=lambda out: _logits(out)[:, 2], **options)
        torch.testing.assert_close(ours, expected)
    with pytest.raises(TypeError, match=f"returned a {type(wrapped(x)).__name__}, not a Tensor; pass a callable"):
        method.attribute(x, target=None, **_options(name))


# Threads sharing a model --------------------------------------------------------------------


class Gate(nn.Module):
    """Identity that calls ``pause`` once, from inside a forward pass (to interleave threads deterministically)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause: object = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pause, self.pause = self.pause, None
        if callable(pause):
            pause()
        return x


def _gated_cnn(seed: int) -> nn.Sequential:
    return nn.Sequential(Gate(), *cnn(seed=seed))


def test_layer_none_ignores_other_threads_running_the_model():
    """Another thread's forward pass during the layer search neither fails nor sways it, nor is changed by it."""
    model = _gated_cnn(23)
    x, other = inputs_for((3, 8, 8), 2, seed=24), inputs_for((3, 8, 8), 3, seed=25)
    alone = GradCAM(_gated_cnn(23))
    expected = alone.attribute(x, target=1)
    seen: list[torch.Tensor] = []

    def run_other_thread() -> None:  # runs while this thread's layer search is inside its forward pass
        thread = threading.Thread(target=lambda: seen.append(model(other)))
        thread.start()
        thread.join()

    model[0].pause = run_other_thread
    method = GradCAM(model)
    maps = method.attribute(x, target=1)
    assert len(seen) == 1 and model[0].pause is None  # the other thread did run during the search
    assert method.layer_name == alone.layer_name
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)
    torch.testing.assert_close(seen[0], model(other), rtol=0, atol=0)


class CountingGate(nn.Module):
    """Counts one-row forward passes (the layer search's); the first waits briefly for a second one."""

    def __init__(self) -> None:
        super().__init__()
        self.searches = 0
        self.second = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            self.searches += 1
            if self.searches > 1:
                self.second.set()
            else:
                self.second.wait(timeout=0.5)  # a concurrent search, if unguarded, arrives meanwhile
        return x


def test_concurrent_first_calls_resolve_the_layer_once_and_agree():
    model = nn.Sequential(CountingGate(), *cnn(seed=26))
    x = inputs_for((3, 8, 8), 3, seed=27)
    method = GradCAM(model)
    start = threading.Barrier(2)
    results: dict[int, torch.Tensor] = {}

    def call(i: int) -> None:
        start.wait()
        results[i] = method.attribute(x, target=i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model[0].searches == 1
    named = GradCAM(model, method.layer_name)
    for i in range(2):
        torch.testing.assert_close(results[i], named.attribute(x, target=i), rtol=0, atol=0)


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_channel_cams_bound_their_blocks_by_default(method: type[ScoreCAM]) -> None:
    # 96 channels x 2 examples = 192 copies: the default batch_size must not put them in one forward pass.
    model = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(96, 4)).eval()
    seen: list[int] = []
    hook = model[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        method(model, "1").attribute(torch.rand(2, 3, 8, 8), target=1)
    finally:
        hook.remove()
    assert len(seen) > 1 and max(seen) <= 64
