"""Attributing a causal LM's continuation to its prompt: a target x prompt matrix and the sequence total."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..core.batching import BatchSize, check_batch_size
from ..core.forward import first_parameter
from ..core.state import guarded
from .explainer import TokenExplainer
from .methods import check_embeddings_run_once, check_options, run
from .model import HFModel, TargetLogProbs, continuation
from .scores import GenerationScores
from .template import TemplateInput, TemplateLogProbs
from .tokens import TokenInputs, as_token_inputs, baseline_ids, token_feature_mask

GENERATION_METHODS = ("integrated_gradients", "input_x_gradient", "feature_ablation", "shapley", "kernel_shap", "lime")


class GenerationExplainer(TokenExplainer):
    r"""Explain a causal LM's continuation :math:`y_1..y_T` of a prompt :math:`x_1..x_P`.

    The explained scores are the teacher-forced log-probabilities
    :math:`\ell_t = \log p(y_t \mid x, y_{<t})` (Captum's ``LLMAttribution``
    with ``attr_target="log_prob"``). The result's ``matrix[t, p]``
    attributes :math:`\ell_t` to prompt token :math:`p` and ``total[p]``
    attributes :math:`\sum_t \ell_t`; for every method here but LIME the
    attribution is linear in the score, so ``total == matrix.sum(0)``.

    * Embedding methods (``"integrated_gradients"``, ``"input_x_gradient"``)
      run at the token embeddings, the prompt's moving from the baseline token's
      (the target's stay put), summed over the embedding dimension. One
      forward pass over ``prompt + target`` per path step gives all
      :math:`T` log-probabilities at once, then :math:`T` backward passes
      give the rows: not one forward per target token.
    * Perturbation methods (``"feature_ablation"``, ``"shapley"``,
      ``"kernel_shap"``, ``"lime"``) switch prompt tokens (words, or the
      fields of a :class:`TemplateInput`) to the baseline; each perturbed
      prompt is scored once, with all :math:`T` log-probabilities.

    Special tokens of the prompt (``<bos>``) are kept when ``keep_special``
    (they get 0). All rows run ``batch_size`` at a time; memory is bounded
    by it, not by ``n_steps``, ``n_samples`` or :math:`T`. The model's state
    (modes, ``requires_grad``, its config's ``use_cache``) is as before the
    call, also after an error: ``use_cache=False`` is passed per call.

    Args:
        model: a ``...ForCausalLM`` (or any module taking ``input_ids=`` and
            ``attention_mask=`` and giving logits ``(N, L, V)``), or an :class:`HFModel`.
        tokenizer: needed for texts, named baselines and token strings.
        method: a name above, or an attrib ``LayerAttribution`` /
            ``PerturbationAttribution`` class (its total is computed as its own score).
        baseline: ``"unk"`` (default), ``"pad"``, ``"mask"``, ... or a token id.
        granularity: ``"token"`` or ``"word"`` (perturbation methods over a token prompt).
        keep_special: leave the prompt's special tokens out of the explanation.
        embeddings: the token-embedding module; by default ``get_input_embeddings()``.

    Example:
        >>> explainer = GenerationExplainer(gpt2, tokenizer, "integrated_gradients")
        >>> result = explainer.attribute("alice lives in", target="paris .", n_steps=32)
        >>> result.matrix.shape, result.total.shape        # (2, 3), (3,)
        >>> ablated = GenerationExplainer(gpt2, tokenizer, "feature_ablation").attribute(
        ...     TemplateInput("{} lives in {}", ["alice", "paris"]), target="and works")
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        method: str | type = "integrated_gradients",
        *,
        baseline: str | int = "unk",
        granularity: str = "token",
        keep_special: bool = True,
        embeddings: str | nn.Module | None = None,
    ) -> None:
        super().__init__(
            model,
            method,
            GENERATION_METHODS,
            tokenizer=tokenizer,
            baseline=baseline,
            granularity=granularity,
            keep_special=keep_special,
            embeddings=embeddings,
        )

    def attribute(
        self,
        prompt: str | TokenInputs | Tensor | TemplateInput,
        target: str | Tensor | Sequence[int] | None = None,
        *,
        max_new_tokens: int = 25,
        batch_size: BatchSize = 64,
        **options: Any,
    ) -> GenerationScores:
        """Attribute the continuation ``target`` of ``prompt`` (greedy, ``max_new_tokens``, if None).

        ``prompt``: a string (tokenized with the tokenizer's special tokens),
        one example of :class:`TokenInputs` or ids ``(P,)`` / ``(1, P)``, or a
        :class:`TemplateInput` (perturbation methods). ``target``: a string
        (tokenized without special tokens), ids ``(T,)``, or None. Options go
        to the method (``n_steps``, ``n_samples``, ``seed``, ...).

        Raises:
            ValueError: texts without a tokenizer; a prompt of several
                examples; an empty target, or a prompt + target longer than the
                model's positions; a named baseline the tokenizer lacks; a
                template with an embedding method.
        """
        check_options(options)
        batch_size = check_batch_size(batch_size)
        device = _device(self.model)
        template = prompt if isinstance(prompt, TemplateInput) else None
        if template is not None:
            if self.spec.kind != "perturbation":
                raise ValueError(
                    f"a TemplateInput prompt needs a perturbation method (fields are switched on and off), got "
                    f"{self.spec.name!r}; use feature_ablation, shapley, kernel_shap or lime"
                )
            if self.tokenizer is None:
                raise ValueError("a TemplateInput prompt is text, which needs a tokenizer: pass tokenizer=")
            tokens = TokenInputs.from_texts(self.tokenizer, template.text([True] * template.n_fields))
        else:
            tokens = _single_prompt(as_token_inputs(prompt, self.tokenizer, name="prompt"))
        tokens = tokens.to(device) if device is not None else tokens
        # Segment / position ids travel with the mask and are continued over the target (TargetLogProbs).
        model, extra = self.model.bind(tokens.extra_inputs)
        target_ids = self._target_ids(model, tokens, extra, target, max_new_tokens)
        steps = target_ids.shape[0]

        scorer = TargetLogProbs(model, target_ids, with_total=not self.spec.linear)
        columns = torch.arange(scorer.with_total + steps, device=target_ids.device).unsqueeze(0)
        options = {"batch_size": batch_size, **options}
        ids, mask = tokens.input_ids, tokens.attention_mask
        if template is None:
            baselines = baseline_ids(tokens, self.baseline, self._ids_source(), keep_special=self.keep_special)
            features = token_feature_mask(tokens, self.granularity, keep_special=self.keep_special)
            args = (mask, *extra)
            check_embeddings_run_once(self.spec, scorer, model.embeddings, model.extra_inputs, (ids, *args))
            method = self.spec.build(scorer, model.embeddings)
            # Embedding maps cover prompt + target positions; the target's are fixed (0): keep the prompt's.
            scores = run(self.spec, method, ids, args, columns, baselines, features, options)[0, :, : ids.shape[1]]
            scores = scores.masked_fill(tokens.frozen(self.keep_special)[0], 0.0)
            prompt_ids: Tensor | None = ids[0]
            prompt_tokens = _strings(self.tokenizer, ids[0])
        else:
            wrapped = TemplateLogProbs(scorer, template, self.tokenizer)
            present = torch.ones(1, template.n_fields, device=target_ids.device)
            method = self.spec.build(wrapped, model.embeddings)
            fields = template.feature_mask(target_ids.device)
            scores = run(self.spec, method, present, (), columns, torch.zeros_like(present), fields, options)[0]
            prompt_ids, prompt_tokens = None, list(template.values)
        with guarded(model), torch.no_grad():
            log_probs = TargetLogProbs(model, target_ids)(ids, mask, *extra)[0]
        matrix, total = (scores, scores.sum(0)) if self.spec.linear else (scores[:steps], scores[steps])
        return GenerationScores(
            matrix=matrix,
            total=total,
            log_probs=log_probs,
            target_ids=target_ids,
            prompt_ids=prompt_ids,
            prompt_tokens=prompt_tokens,
            target_tokens=_strings(self.tokenizer, target_ids),
            method=self.spec.name,
        )

    def _target_ids(
        self, model: HFModel, prompt: TokenInputs, extra: tuple[Tensor, ...], target: Any, max_new_tokens: int
    ) -> Tensor:
        """The continuation's ids ``(T,)``: the given one, checked, or the greedy one."""
        length = prompt.input_ids.shape[1]
        limit = model.max_positions
        if target is None:
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
            if limit is not None and length + max_new_tokens > limit:
                raise ValueError(
                    f"the prompt has {length} tokens, so max_new_tokens={max_new_tokens} would exceed the model's "
                    f"{limit} positions; lower max_new_tokens to at most {limit - length}"
                )
            eos = _eos_ids(self.tokenizer, model)
            return greedy(model, prompt.input_ids, max_new_tokens, eos, extra_inputs=extra)
        if isinstance(target, str):
            if self.tokenizer is None:
                raise ValueError("target is text, which needs a tokenizer: pass tokenizer=, or target ids")
            ids = torch.tensor(self.tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
        elif isinstance(target, Tensor) or (isinstance(target, Sequence) and not isinstance(target, str)):
            ids = torch.as_tensor(target)
            if (
                ids.is_floating_point()
                or ids.dtype == torch.bool
                or ids.dim() > 2
                or (ids.dim() == 2 and ids.shape[0] != 1)
            ):
                raise ValueError(
                    f"target ids must be integers of shape (T,) or (1, T), got {tuple(ids.shape)} {ids.dtype}"
                )
            ids = ids.reshape(-1).long()
        else:
            raise TypeError(f"target must be a string, token ids (T,) or None, got {type(target).__name__}")
        if ids.numel() == 0:
            raise ValueError("target must hold at least one token")
        vocab = getattr(self.model.embeddings, "num_embeddings", None)
        if bool((ids < 0).any()) or (vocab is not None and bool((ids >= vocab).any())):
            raise ValueError(f"target ids must lie in [0, {vocab}) (the model's vocabulary)")
        if limit is not None and length + ids.numel() > limit:
            raise ValueError(
                f"prompt ({length} tokens) + target ({ids.numel()} tokens) exceed the model's {limit} positions; "
                f"shorten the target to at most {limit - length} tokens"
            )
        return ids.to(prompt.device)


def greedy(
    model: HFModel,
    prompt_ids: Tensor,
    max_new_tokens: int,
    eos: Sequence[int] = (),
    *,
    extra_inputs: Sequence[Tensor] = (),
) -> Tensor:
    """Greedy continuation ``(T,)`` of a prompt ``(1, P)``: the argmax token, ``max_new_tokens`` times.

    Stops after an ``eos`` token (kept, as HuggingFace's ``generate``). Runs
    under the state guard without gradients; each step is a full forward
    pass with ``use_cache=False``, so the model's config is never touched.
    ``extra_inputs``: the prompt's ``(1, P)`` tensors for ``model.extra_inputs``
    (``token_type_ids``, ``position_ids``), continued over the new tokens as
    :func:`~attrib.text.model.continuation` says.
    """
    if len(extra_inputs) != len(model.extra_inputs):
        raise ValueError(
            f"extra_inputs must hold the prompt's {', '.join(model.extra_inputs) or 'no'} per-token tensors "
            f"(the model's extra_inputs), got {len(extra_inputs)}"
        )
    generated: list[Tensor] = []
    stop = torch.tensor(list(eos), dtype=torch.long, device=prompt_ids.device)
    length = torch.full((prompt_ids.shape[0], 1), prompt_ids.shape[1], device=prompt_ids.device)
    with guarded(model), torch.no_grad():
        sequence = prompt_ids
        for step in range(max_new_tokens):
            extra = [
                torch.cat([value, continuation(name, value, length, step)], 1)
                for name, value in zip(model.extra_inputs, extra_inputs)
            ]
            logits: Tensor = model(sequence, torch.ones_like(sequence), *extra)
            token = logits[:, -1].argmax(-1)  # (1,)
            generated.append(token)
            sequence = torch.cat([sequence, token.unsqueeze(1)], 1)
            if stop.numel() and bool(torch.isin(token, stop).any()):
                break
    return torch.cat(generated)


def _single_prompt(tokens: TokenInputs) -> TokenInputs:
    """One prompt without its padding."""
    if tokens.n != 1:
        raise ValueError(f"prompt must be one example (the result is one target x prompt matrix), got {tokens.n}")
    keep = (tokens.attention_mask[0] != 0).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ValueError("prompt has no tokens (its attention mask is all 0)")
    if keep.numel() == tokens.input_ids.shape[1]:
        return tokens
    return tokens.columns(keep)


def _strings(tokenizer: Any, ids: Tensor) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids.tolist()]
    return list(tokenizer.convert_ids_to_tokens(ids.tolist()))


def _eos_ids(tokenizer: Any, model: HFModel) -> list[int]:
    """The end-of-sequence ids (the tokenizer's, else the model config's)."""
    value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        value = getattr(getattr(model.model, "config", None), "eos_token_id", None)
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _device(model: nn.Module) -> torch.device | None:
    param = first_parameter(model)
    return None if param is None else param.device
