"""Per-token attributions of a sequence classifier, for a batch of texts of different lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batching import BatchSize, check_batch_size, map_blocks
from ..core.forward import first_parameter
from ..core.state import guarded
from ..targets import TargetLike
from .explainer import TokenExplainer
from .methods import METHODS, check_embeddings_run_once, check_options, run
from .model import HFModel
from .scores import TokenScores
from .tokens import TokenInputs, as_token_inputs, baseline_ids, token_feature_mask


class ClassifierExplainer(TokenExplainer):
    r"""Explain a sequence classifier's class score token by token.

    The model is any module taking ``input_ids=`` and ``attention_mask=``
    (a HuggingFace ``...ForSequenceClassification``, or an :class:`HFModel`)
    and giving logits ``(N, C)``. With :math:`e_l` the token embedding at
    position :math:`l` and :math:`e'_l` that of the baseline token:

    * ``"integrated_gradients"``: :math:`s_l = \sum_d (e_l - e'_l)_d \int_0^1
      \partial S_t / \partial e_{l,d}\,(e' + \alpha (e - e'))\, d\alpha`
      (:class:`attrib.LayerIntegratedGradients`); completeness
      :math:`\sum_l s_l \approx S_t(x) - S_t(x')` with :math:`x'` the baseline ids.
    * ``"input_x_gradient"``: :math:`s_l = \sum_d e_{l,d}\, \partial S_t / \partial e_{l,d}`.
    * ``"saliency"``: :math:`s_l = \lVert \partial S_t / \partial e_l \rVert_2`.
    * ``"feature_ablation"``, ``"shapley"``, ``"kernel_shap"``, ``"lime"``: the
      perturbation methods over tokens (``granularity="token"``) or words
      (``"word"``: every token of a word gets the word's value), a switched-off
      token taking the baseline id.
    * a subclass of :class:`attrib.LayerAttribution` (run at the embeddings,
      summed over ``D``) or of :class:`attrib.PerturbationAttribution`.

    The baseline (``baseline``: ``"pad"``, ``"mask"``, ``"unk"`` or an id)
    replaces the real tokens only: padding and special tokens (with
    ``keep_special``) keep their ids, are never perturbed and score exactly 0.
    The attention mask travels with every perturbed or interpolated row, so a
    text's scores do not depend on how much it is padded nor on the other
    texts of the batch. Every method runs ``batch_size`` rows at a time.

    Args:
        model: the classifier.
        method: a name above or an attrib Attribution class.
        tokenizer: needed for texts and for a named baseline token.
        baseline: the token that stands for "absent".
        granularity: ``"token"`` or ``"word"`` (perturbation methods).
        keep_special: leave special tokens out of the explanation.
        embeddings: the token-embedding module (dotted name or module); by
            default ``model.get_input_embeddings()``.

    Example:
        >>> explainer = ClassifierExplainer(model, "integrated_gradients", tokenizer=tokenizer)
        >>> result = explainer.attribute(["a good film", "not bad at all"], target=1, n_steps=32)
        >>> result.scores.shape, result.top(2)                      # (2, L); best tokens per text
    """

    def __init__(
        self,
        model: nn.Module,
        method: str | type = "integrated_gradients",
        *,
        tokenizer: Any = None,
        baseline: str | int = "pad",
        granularity: str = "token",
        keep_special: bool = True,
        embeddings: str | nn.Module | None = None,
    ) -> None:
        super().__init__(
            model,
            method,
            METHODS,
            tokenizer=tokenizer,
            baseline=baseline,
            granularity=granularity,
            keep_special=keep_special,
            embeddings=embeddings,
        )
        self.method = self.spec.build(self.model, self.model.embeddings)

    def attribute(
        self,
        inputs: TokenInputs | str | Sequence[str] | Tensor | Any,
        target: TargetLike = None,
        *,
        batch_size: BatchSize = 64,
        **options: Any,
    ) -> TokenScores:
        """Per-token scores of ``target`` (the predicted class if None) for each text of ``inputs``.

        ``inputs``: :class:`TokenInputs`, text(s) (with a tokenizer), a
        tokenizer output (sentence pairs: ``tokenizer(firsts, seconds,
        return_tensors="pt")``) or ids. The inputs' further per-token tensors
        (:attr:`TokenInputs.extra_inputs`: ``token_type_ids``,
        ``position_ids``) reach the model with every row, as the attention
        mask does. ``options`` go to the method (``n_steps``, ``n_samples``,
        ``seed``, ...).

        Raises:
            ValueError: an empty list of texts, texts without a tokenizer, a
                named baseline the tokenizer lacks, word granularity without
                word ids, a per-token input the model does not take.
        """
        check_options(options)
        batch_size = check_batch_size(batch_size)
        tokens = as_token_inputs(inputs, self.tokenizer)
        device = _model_device(self.model)
        if device is not None and tokens.device != device:
            tokens = tokens.to(device)
        ids, mask = tokens.input_ids, tokens.attention_mask
        # Segment / position ids travel with the mask, so every row is the input model(**encoding) sees.
        model, extra = self.model.bind(tokens.extra_inputs)
        method = self.method if model is self.model else self.spec.build(model, model.embeddings)
        args = (mask, *extra)
        first = tuple(a[:1] for a in (ids, *args))
        check_embeddings_run_once(self.spec, model, model.embeddings, model.extra_inputs, first)
        baselines = baseline_ids(tokens, self.baseline, self._ids_source(), keep_special=self.keep_special)
        features = token_feature_mask(tokens, self.granularity, keep_special=self.keep_special)
        explained = self._predicted(model, ids, args, batch_size) if target is None else target
        scores = run(
            self.spec, method, ids, args, explained, baselines, features, {"batch_size": batch_size, **options}
        )
        frozen = tokens.frozen(self.keep_special)
        aligned = frozen.unsqueeze(1) if scores.dim() == 3 else frozen
        scores = scores.masked_fill(aligned, 0.0)
        if self.spec.kind == "embedding" and self.granularity == "word":
            scores = _group_totals(scores, features).masked_fill(aligned, 0.0)
        return TokenScores(scores, ids, mask, tokens.tokens, explained, self.spec.name, frozen)

    @staticmethod
    def _predicted(model: HFModel, ids: Tensor, args: tuple[Tensor, ...], batch_size: BatchSize) -> Tensor:
        """The top-1 class of each example ``(N,)``, ``batch_size`` rows at a time, without gradients."""

        def top1(start: int, stop: int) -> Tensor:
            logits: Tensor = model(ids[start:stop], *(a[start:stop] for a in args))
            if logits.dim() != 2:
                raise ValueError(
                    f"target=None needs class logits (N, C), but the model gives shape {tuple(logits.shape)}; "
                    "pass a target"
                )
            return logits.argmax(1)

        with guarded(model), torch.no_grad():
            return torch.cat(map_blocks(ids.shape[0], batch_size, top1))


def _model_device(model: nn.Module) -> torch.device | None:
    param = first_parameter(model)
    return None if param is None else param.device


def _group_totals(scores: Tensor, groups: Tensor) -> Tensor:
    """Give every token the sum of its group's (word's) token scores, as the perturbation methods give words.

    ``groups`` ``(N, L)`` are feature ids; frozen positions must score 0 (they join a word's group).
    """
    flat = scores if scores.dim() == 3 else scores.unsqueeze(1)
    width = int(groups.max()) + 1
    index = groups.unsqueeze(1).expand_as(flat)
    totals = flat.new_zeros(*flat.shape[:2], width).scatter_add(2, index, flat)
    out = totals.gather(2, index)
    return out if scores.dim() == 3 else out.squeeze(1)
