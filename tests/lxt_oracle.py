"""lxt 2.1's AttnLRP rules applied by hand to transformers 5.x models: the differential oracle for attrib.AttnLRP.

``lxt.efficient.monkey_patch`` does not run on transformers 5.x: importing ``lxt.efficient`` fails
(its copy of BERT imports ``find_pruneable_heads_and_indices``, removed from
``transformers.pytorch_utils``), and its ``patch_attention`` replaces ``ALL_ATTENTION_FUNCTIONS`` by a
plain dict, which 5.x models call ``.get_interface`` on. :func:`lxt_patched` therefore loads lxt's rule
and patch functions without the package ``__init__`` and applies them the way lxt's model maps do:
lxt's ``layer_norm_forward`` on ``nn.LayerNorm``, its ``wrap_attention_forward`` (the uniform rule:
query and key gradients / 4, value / 2) on the model family's ``eager_attention_forward``, and its
``identity_rule_implicit`` on the activations (GPT-2's MLP via lxt's own ``mlp_forward``). Everything
is restored on exit. lxt's relevance is Gradient x Input at the explained tensor.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _lxt_efficient() -> tuple[Any, Any]:
    """lxt.efficient.rules and lxt.efficient.patches, imported without lxt.efficient/__init__.py."""
    import lxt

    if "lxt.efficient" not in sys.modules:
        package = types.ModuleType("lxt.efficient")
        package.__path__ = [str(Path(lxt.__file__).parent / "efficient")]
        sys.modules["lxt.efficient"] = package
    return importlib.import_module("lxt.efficient.rules"), importlib.import_module("lxt.efficient.patches")


@contextmanager
def lxt_patched(family: str) -> Iterator[None]:
    """lxt's AttnLRP patches for ``family`` ("bert", "gpt2" or "vit") in this block, undone on exit."""
    rules, patches = _lxt_efficient()
    from transformers import activations

    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    saved: list[tuple[Any, str, Any]] = [
        (nn.LayerNorm, "forward", nn.LayerNorm.forward),
        (module, "eager_attention_forward", module.eager_attention_forward),
        (activations.GELUActivation, "forward", activations.GELUActivation.forward),
        (nn.Tanh, "forward", nn.Tanh.forward),
    ]
    try:
        nn.LayerNorm.forward = patches.layer_norm_forward
        module.eager_attention_forward = patches.wrap_attention_forward(module.eager_attention_forward)
        for cls in (activations.GELUActivation, nn.Tanh):
            original = cls.forward

            def forward(self: nn.Module, x: torch.Tensor, _original: Any = original) -> torch.Tensor:
                return rules.identity_rule_implicit(lambda t: _original(self, t), x)  # type: ignore[no-any-return]

            cls.forward = forward
        if family == "gpt2":
            mlp = module.GPT2MLP
            saved.append((mlp, "forward", mlp.forward))

            def mlp_forward(self: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
                hidden = self.c_fc(hidden)
                hidden = rules.identity_rule_implicit(self.act, hidden)
                return self.c_proj(hidden)  # type: ignore[no-any-return]

            mlp.forward = mlp_forward
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)
