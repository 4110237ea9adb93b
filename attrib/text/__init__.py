"""Token attribution for text models: sequence classifiers and generative language models.

* :class:`ClassifierExplainer`: per-token scores (:class:`TokenScores`) of a
  classifier's class score, for a batch of texts of different lengths
  (integrated gradients, gradient x input, saliency at the embeddings;
  feature ablation, Shapley sampling, KernelSHAP, LIME over tokens or words).
* :class:`GenerationExplainer`: the ``(target_len, prompt_len)`` matrix
  attributing each continuation token's log-probability to each prompt token,
  and the sequence total (:class:`GenerationScores`); prompts may be
  :class:`TemplateInput` s whose fields are the features.
* :class:`TokenInputs`, :func:`baseline_ids`, :func:`token_feature_mask`:
  ids and masks of a padded batch, the baseline ids and feature groups the
  methods use; :class:`HFModel`, :class:`TargetLogProbs`: adapters that let
  any attrib method drive a HuggingFace-style model.

``transformers`` is not imported here: any model taking ``input_ids=`` and
``attention_mask=`` works, and tokenizers are duck-typed (the ``text`` extra
installs ``transformers`` and ``tokenizers``). The encoding's further
per-token tensors (``token_type_ids`` of sentence pairs, ``position_ids``:
:attr:`TokenInputs.extra_inputs`) reach the model with every explained row, as
the attention mask does, so the explanation is that of ``model(**encoding)``.

Example:
    >>> from attrib.text import ClassifierExplainer, GenerationExplainer
    >>> scores = ClassifierExplainer(bert, tokenizer=tok).attribute(["a good film"], target=1)
    >>> gen = GenerationExplainer(gpt2, tok, "feature_ablation").attribute("alice lives in", target="paris")
"""

from .classifier import ClassifierExplainer
from .generation import GENERATION_METHODS, GenerationExplainer, greedy
from .methods import METHODS
from .model import HFModel, TargetLogProbs
from .scores import GenerationScores, TokenScores
from .template import TemplateInput, TemplateLogProbs
from .tokens import TokenInputs, as_token_inputs, baseline_ids, token_feature_mask, token_id

__all__ = [
    "GENERATION_METHODS",
    "METHODS",
    "ClassifierExplainer",
    "GenerationExplainer",
    "GenerationScores",
    "HFModel",
    "TargetLogProbs",
    "TemplateInput",
    "TemplateLogProbs",
    "TokenInputs",
    "TokenScores",
    "as_token_inputs",
    "baseline_ids",
    "greedy",
    "token_feature_mask",
    "token_id",
]
