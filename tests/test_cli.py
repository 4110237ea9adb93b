"""The ``attrib`` command: demo, explain and benchmark end to end, the registry, model loading, bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from attrib.cli import main
from attrib.cli.loading import LoadError, denormalize, load_image, load_model, normalize
from attrib.cli.registry import METHODS, build_method, canonical_name, default_options
from attrib.data import load_model as load_shipped
from attrib.data import make_shapes

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _attrib(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "attrib", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _write_images(directory: Path, count: int) -> list[str]:
    batch = make_shapes(count, seed=3)
    paths = []
    for i in range(count):
        path = directory / f"shape{i}.png"
        Image.fromarray((batch.images[i].permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
        paths.append(str(path))
    return paths


def test_demo_end_to_end(tmp_path: Path) -> None:
    run = _attrib(
        "demo", "--images", "2", "--method", "saliency,gradcam", "--method", "rise", "--out", "d.png", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    width, height = _png(tmp_path / "d.png")
    assert width > 300 and height > 200
    lines = run.stdout.splitlines()
    assert any(line.startswith("| Grad-CAM ") for line in lines)
    assert any("num_masks=1000" in line for line in lines)  # the settings are printed
    assert "wrote d.png" in run.stdout


def test_explain_end_to_end_with_saved_maps(tmp_path: Path) -> None:
    images = _write_images(tmp_path, 2)
    run = _attrib(
        "explain",
        "--model",
        "shapes-resnet",
        "--image",
        *images,
        "--method",
        "gradcam",
        "--method",
        "saliency",
        "--target",
        "0,1",
        "--out",
        "e.png",
        "--save-maps",
        "maps.npy",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    _png(tmp_path / "e.png")
    maps = np.load(tmp_path / "maps.npy")
    assert maps.shape == (2, 2, 64, 64) and np.isfinite(maps).all()
    # the saved maps are the registry's maps of those images and targets
    model = load_shipped("shapes-resnet")
    x = torch.cat([load_image(p) for p in images])
    expected = build_method("gradcam", model).attribute(x, torch.tensor([0, 1]))
    np.testing.assert_allclose(maps[0], expected[:, 0].numpy(), rtol=1e-4, atol=1e-6)


def test_benchmark_end_to_end(tmp_path: Path) -> None:
    run = _attrib("benchmark", "--images", "3", "--method", "gradcam,saliency", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| shapes-cnn")]
    assert [r.split("|")[2].strip() for r in rows] == ["center", "random", "Grad-CAM", "Saliency"]
    for row in rows:
        pointing = float(row.split("|")[4])
        assert 0.0 <= pointing <= 1.0


def test_explain_in_process_with_pt_maps_and_torchvision_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _write_images(tmp_path, 1)
    out, saved = tmp_path / "tv.png", tmp_path / "maps.pt"
    status = main(
        [
            "explain",
            "--model",
            "resnet18",
            "--image",
            images[0],
            "--method",
            "gradcam,saliency",
            "--size",
            "64",
            "--out",
            str(out),
            "--save-maps",
            str(saved),
        ]
    )
    assert status == 0
    _png(out)
    maps = torch.load(saved)
    assert set(maps) == {"gradcam", "saliency"} and maps["gradcam"].shape == (1, 1, 64, 64)
    assert "Grad-CAM" in capsys.readouterr().out


def test_registry_builds_every_method_to_input_sized_maps() -> None:
    model = load_shipped("shapes-cnn")
    x = make_shapes(2, seed=11).images
    fast = {
        "rise": {"num_masks": 40},
        "extremal": {"max_iter": 3},
        "occlusion": {"window": 16, "stride": 16},
        "integratedgradients": {"n_steps": 4},
        "smoothgrad": {"n_samples": 3},
    }
    for name in METHODS:
        options = default_options(name)
        options.update(fast.get(name, {}))
        maps = build_method(name, model).attribute(x, torch.tensor([0, 3]), **options)
        assert maps.shape == (2, 1, 64, 64), name
        assert bool(maps.isfinite().all()), name
    assert canonical_name("Grad-CAM") == "gradcam" and canonical_name("IG") == "integratedgradients"
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        canonical_name("nosuch")
    default_options("rise")["num_masks"] = 1
    assert default_options("rise")["num_masks"] == 1000  # callers get a copy


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_load_model_specs(tmp_path: Path) -> None:
    tv = load_model("resnet18")
    assert not tv.training
    weights = tmp_path / "w.pt"
    torch.save(tv.state_dict(), weights)
    again = load_model("resnet18", weights=str(weights))
    assert all(torch.equal(a, b) for a, b in zip(tv.state_dict().values(), again.state_dict().values()))
    whole = tmp_path / "whole.pt"
    torch.save(load_shipped("shapes-cnn"), whole)
    x = torch.rand(2, 3, 64, 64)
    reference = load_shipped("shapes-cnn")(x)
    assert torch.allclose(load_model(str(whole))(x), reference)
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(load_shipped("shapes-cnn"), x), str(scripted))
    assert torch.allclose(load_model(str(scripted))(x), reference, atol=1e-6)
    assert isinstance(load_model("attrib.data:load_model"), nn.Module)
    with pytest.raises(LoadError, match="unknown model"):
        load_model("not-a-model")
    with pytest.raises(LoadError, match="do not fit"):
        load_model("resnet18", weights=_state(tmp_path))
    with pytest.raises(LoadError, match="state_dict, not a model"):
        load_model(_state(tmp_path))
    with pytest.raises(LoadError, match="no callable"):
        load_model("attrib.data:nothing_here")


def _state(tmp_path: Path) -> str:
    path = tmp_path / "cnn_state.pt"
    torch.save(load_shipped("shapes-cnn").state_dict(), path)
    return str(path)


def test_load_image_and_normalisation(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((20, 40, 3), 255, dtype=np.uint8)).save(path)
    assert load_image(path).shape == (1, 3, 20, 40)
    square = load_image(path, size=16)
    assert square.shape == (1, 3, 16, 16) and float(square.min()) == 1.0
    assert load_image(path, size=(8, 12)).shape == (1, 3, 8, 12)
    x = torch.rand(1, 3, 4, 4)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    with pytest.raises(LoadError, match="does not exist"):
        load_image(tmp_path / "missing.png")


BAD_ARGUMENTS = [
    (["nosuchcommand"], "invalid choice"),
    (["demo", "--images", "0"], "positive integer"),
    (["demo", "--method", "nosuch"], "unknown method"),
    (["demo", "--out", "x.jpg"], ".png"),
    (["explain", "--image", "x.png"], "--model"),
    (["explain", "--model", "shapes-cnn"], "--image"),
    (["explain", "--model", "no-such-model", "--image", "IMG"], "unknown model"),
    (["explain", "--model", "shapes-cnn", "--image", "missing.png"], "does not exist"),
    (["explain", "--model", "shapes-cnn", "--image", "IMG", "--target", "abc"], "--target"),
    (["explain", "--model", "shapes-cnn", "--image", "IMG", "--target", "99"], "out of range"),
    (["explain", "--model", "shapes-cnn", "--image", "IMG", "--layer", "nolayer"], "no layer named"),
    (["explain", "--model", "shapes-cnn", "--image", "IMG", "--save-maps", "m.txt"], ".pt or .npy"),
    (["explain", "--model", "resnet18", "--weights", "NOT_A_WEIGHT", "--image", "IMG"], "weights name"),
    (["benchmark", "--model", "nosuch"], "invalid choice"),
    (["benchmark", "--images", "-3"], "positive integer"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_give_one_line_and_non_zero_status(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _write_images(tmp_path, 1)[0]
    argv = [image if a == "IMG" else a for a in argv]
    monkeypatch.chdir(tmp_path)
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_bad_argument_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    run = _attrib("explain", "--model", "shapes-cnn", "--image", "missing.png", cwd=tmp_path)
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "does not exist" in run.stderr


def test_occlusion_defaults_scale_with_the_image_size() -> None:
    from attrib.cli.registry import default_options

    small, large = default_options("occlusion"), default_options("occlusion", size=224)
    windows = [((size - o["window"]) // o["stride"] + 1) ** 2 for size, o in ((64, small), (224, large))]
    assert large["window"] > small["window"] and windows[1] <= 1.5 * windows[0]
