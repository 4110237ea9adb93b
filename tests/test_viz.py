"""attrib.viz: map normalisation, overlays and PNG grids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from attrib.viz import as_rgb, colorize, normalize_map, overlay, save_grid, save_overlay

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_minmax_and_percentile_normalisation() -> None:
    a = torch.arange(100.0).view(10, 10)
    m = normalize_map(a, "minmax")
    assert float(m.min()) == 0 and float(m.max()) == 1
    assert torch.allclose(m, a / 99)
    p = normalize_map(a, "percentile", q=50)
    # values above the median saturate at 1; the ramp below is linear from the minimum
    assert float(p.max()) == 1 and int((p == 1).sum()) == 50
    assert torch.allclose(p[0], torch.arange(10.0) / 49.5)
    spike = torch.zeros(10, 10)
    spike[0, 0] = 1e6
    spike[5:, :] = 1.0
    assert float(normalize_map(spike, "percentile", q=90)[9, 9]) == 1.0  # one hot pixel does not wash out the rest
    assert float(normalize_map(spike, "minmax")[9, 9]) < 1e-5


def test_signed_normalisation_keeps_zero_and_sign() -> None:
    a = torch.tensor([[-4.0, -1.0], [0.0, 2.0]])
    s = normalize_map(a, "signed", q=100)
    assert torch.allclose(s, torch.tensor([[-1.0, -0.25], [0.0, 0.5]]))
    rgb = colorize(s, "RdBu_r", signed=True)
    assert rgb.shape == (2, 2, 3)
    # zero maps to the centre of the diverging map (near white), the ends to blue and red
    assert float(rgb[1, 0].min()) > 0.9
    assert float(rgb[0, 0, 2]) > float(rgb[0, 0, 0]) and float(rgb[1, 1, 0]) > float(rgb[1, 1, 2])


def test_degenerate_maps_and_bad_arguments() -> None:
    assert torch.equal(normalize_map(torch.full((4, 4), 3.0)), torch.zeros(4, 4))
    nan = torch.ones(4, 4)
    nan[0, 0] = float("nan")
    assert bool(normalize_map(nan).isfinite().all())
    assert normalize_map(torch.rand(1, 1, 5, 6)).shape == (5, 6)
    with pytest.raises(ValueError, match="normalization"):
        normalize_map(torch.rand(4, 4), "zscore")
    with pytest.raises(ValueError, match="one 2-D map"):
        normalize_map(torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="colour map"):
        colorize(torch.rand(4, 4), "no-such-map")
    with pytest.raises(ValueError, match="alpha"):
        overlay(torch.rand(3, 4, 4), torch.rand(4, 4), alpha=2)


def test_overlay_blends_and_resizes() -> None:
    image = torch.rand(1, 3, 32, 32)
    heat = torch.rand(1, 1, 8, 8)
    out = overlay(image, heat)
    assert out.shape == (32, 32, 3) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.allclose(overlay(image, heat, alpha=0.0), as_rgb(image))
    grey = as_rgb(torch.rand(32, 32))
    assert grey.shape == (32, 32, 3) and torch.equal(grey[..., 0], grey[..., 2])


def test_save_grid_and_overlay_write_pngs(tmp_path: Path) -> None:
    images = torch.rand(2, 3, 16, 16)
    maps = {"A": torch.rand(2, 1, 16, 16), "B": torch.randn(2, 1, 4, 4), "C": torch.rand(2, 16, 16)}
    one_row = _png_size(save_grid(tmp_path / "grid.png", images, maps, cell=1.0, dpi=50))
    wrapped = _png_size(
        save_grid(
            tmp_path / "wrap.png",
            images,
            maps,
            max_columns=2,
            cell=1.0,
            dpi=50,
            subtitles={"A": ["x", "y"], "B": "t"},
            image_titles=["one", "two"],
            masks=torch.rand(2, 16, 16) > 0.5,
            normalization="signed",
        )
    )
    assert one_row[0] == 4 * 50 and wrapped[0] == 2 * 50  # four cells a row, then two
    assert wrapped[1] > one_row[1]
    assert _png_size(save_overlay(tmp_path / "one.png", images[0], maps["A"][0], title="A"))[0] > 0
    with pytest.raises(ValueError, match="maps\\['A'\\] has 1 maps for 2 images"):
        save_grid(tmp_path / "bad.png", images, {"A": torch.rand(1, 1, 16, 16)})


def test_missing_matplotlib_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert normalize_map(torch.rand(4, 4)).shape == (4, 4)  # normalisation needs no plotting library
    with pytest.raises(ImportError, match="attrib\\[viz\\]"):
        overlay(torch.rand(3, 4, 4), torch.rand(4, 4))
