"""``attrib explain --text``: per-token attributions of a text classifier for one or more sentences.

The model is a local HuggingFace sequence-classifier directory (read with
``AutoModelForSequenceClassification`` / ``AutoTokenizer``, local files only,
never the network) or the shipped ``text-classifier`` (:mod:`attrib.data`,
whitespace words over its own vocabulary). Every method runs through
:class:`attrib.text.ClassifierExplainer`; the terminal shows each sentence's
tokens coloured by score (24-bit colours on a terminal, ``token[+0.12]``
otherwise), and ``--html`` writes the same as a page.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .common import CommandError, positive_int

#: The shipped text model's name for ``--model``.
SHIPPED = "text-classifier"

_ALIASES = {
    "ig": "integrated_gradients",
    "integratedgradients": "integrated_gradients",
    "inputxgradient": "input_x_gradient",
    "gradientxinput": "input_x_gradient",
    "saliency": "saliency",
    "gradient": "saliency",
    "featureablation": "feature_ablation",
    "ablation": "feature_ablation",
    "occlusion": "feature_ablation",
    "shapley": "shapley",
    "shapleyvaluesampling": "shapley",
    "kernelshap": "kernel_shap",
    "lime": "lime",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the text mode (``--text``) on the ``explain`` parser."""
    group = parser.add_argument_group(
        "text classifiers (--text)",
        "with --text, --model is a local HuggingFace sequence-classifier directory or 'text-classifier' "
        "(the shipped model), and --method takes: integrated_gradients (default), input_x_gradient, saliency, "
        "feature_ablation, shapley, kernel_shap, lime, or all",
    )
    group.add_argument("--text", action="store_true", help="explain sentences with a text classifier")
    group.add_argument("--sentence", action="append", metavar="TEXT", help="a sentence to explain; repeatable")
    group.add_argument("--html", metavar="FILE", help="also write the coloured tokens as an HTML page")
    group.add_argument("--baseline", default="pad",
                       help="the token standing for 'absent': pad (default), mask, unk or a token id")
    group.add_argument("--granularity", choices=("token", "word"), default="token",
                       help="perturbation methods switch tokens or whole words (default token)")
    group.add_argument("--n-steps", type=positive_int, default=32, help="integration steps (default 32)")
    group.add_argument("--n-samples", type=positive_int,
                       help="Shapley orders (default 25) / KernelShap and Lime coalitions (default 200)")
    group.add_argument("--seed", type=int, default=0, help="seed of the sampling methods (default 0)")
    group.add_argument("--batch-size", type=positive_int, default=256,
                       help="the most rows in one forward pass (default 256)")
    group.add_argument("--colour", choices=("auto", "always", "never"), default="auto",
                       help="colour the terminal output (auto: on a terminal, unless NO_COLOR is set)")


def method_names(values: list[str] | None) -> list[str]:
    """Explainer method names from repeated and/or comma-separated ``--method`` values (default IG)."""
    from ..text.methods import METHODS

    names: list[str] = []
    for value in values or ["integrated_gradients"]:
        for part in value.split(","):
            key = part.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
            if not key:
                continue
            chosen = list(METHODS) if key == "all" else [_ALIASES.get(key, key)]
            for name in chosen:
                if name not in METHODS:
                    raise CommandError(f"unknown text method {part.strip()!r}; choose from {', '.join(METHODS)}")
                if name not in names:
                    names.append(name)
    if not names:
        raise CommandError("no method given")
    return names


@dataclass
class TextModel:
    """A loaded classifier, how to tokenize for it, and its class names."""

    model: nn.Module
    inputs: Any  # TokenInputs of the sentences
    labels: list[str]
    embeddings: str | None
    tokenizer: Any
    baseline: str | int
    notes: list[str]


def _shipped(sentences: list[str], baseline: str) -> TextModel:
    from ..data import LABELS, PAD_ID, VOCAB, encode, load_model
    from ..data.text import UNK_ID
    from ..text.tokens import TokenInputs

    model = load_model(SHIPPED)
    limit = int(getattr(model, "max_length", 32))
    rows = [encode(s) for s in sentences]
    for sentence, ids in zip(sentences, rows):
        if len(ids) == 0:
            raise CommandError(f"--sentence {sentence!r} has no words")
        if len(ids) > limit:
            raise CommandError(f"--sentence {sentence[:40]!r}... has {len(ids)} words; the shipped model reads "
                               f"at most {limit}")
    length = max(len(ids) for ids in rows)
    ids = torch.stack([torch.cat([r, torch.full((length - len(r),), PAD_ID, dtype=torch.long)]) for r in rows])
    mask = (torch.arange(length) < torch.tensor([len(r) for r in rows]).unsqueeze(1)).long()
    tokens = [[VOCAB[int(i)] for i in row] for row in ids]
    inputs = TokenInputs(ids, mask, torch.zeros_like(ids, dtype=torch.bool), None, tokens)
    unknown = sorted({w for s in sentences for w in s.split() if w.lower() not in VOCAB})
    notes = [f"not in the shipped vocabulary, read as <unk>: {', '.join(unknown)}"] if unknown else []
    named = {"pad": PAD_ID, "unk": UNK_ID}
    if baseline.lower() in named:
        chosen: str | int = named[baseline.lower()]
    else:
        try:
            chosen = int(baseline)
        except ValueError:
            raise CommandError(
                f"--baseline for the shipped model must be pad, unk or a token id, got {baseline!r}"
            ) from None
    return TextModel(model, inputs, list(LABELS), "embedding", None, chosen, notes)


def _huggingface(path: str, sentences: list[str], baseline: str) -> TextModel:
    if not Path(path).is_dir():
        raise CommandError(
            f"--model {path!r} is neither {SHIPPED!r} nor a directory holding a saved HuggingFace classifier "
            "(save_pretrained)"
        )
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise CommandError("explaining a HuggingFace model needs transformers: pip install 'attrib[text]'") from None
    from transformers.utils import logging as hf_logging

    from ..text.tokens import TokenInputs

    bars = hf_logging.is_progress_bar_enabled()
    # the loading bar would be the only thing on stderr
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot load a sequence classifier and its tokenizer from {path!r}: "
                           f"{' '.join(str(error).split())[:300]}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    model.eval()
    inputs = TokenInputs.from_texts(tokenizer, sentences, truncation=True)
    id2label = getattr(model.config, "id2label", None) or {}
    classes = int(getattr(model.config, "num_labels", len(id2label)) or len(id2label))
    labels = [str(id2label.get(i, f"class {i}")) for i in range(classes)]
    chosen: str | int = int(baseline) if baseline.isdigit() else baseline
    return TextModel(model, inputs, labels, None, tokenizer, chosen, [])


def _colour(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _options(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """``attribute`` options of one method from the command line."""
    if method == "integrated_gradients":
        return {"n_steps": args.n_steps}
    if method in ("shapley", "kernel_shap", "lime"):
        default = 25 if method == "shapley" else 200
        return {"n_samples": args.n_samples or default, "seed": args.seed}
    return {}


def _check_image_options(args: argparse.Namespace) -> None:
    for flag, value in (("--image", args.image), ("--weights", args.weights), ("--layer", args.layer),
                        ("--size", args.size), ("--save-maps", args.save_maps)):
        if value:
            raise CommandError(f"{flag} is for images; with --text give --sentence")


def run(args: argparse.Namespace) -> int:
    """The text mode of ``attrib explain``."""
    from ..viz.text import tokens_ansi, tokens_html

    _check_image_options(args)
    sentences = [s for s in (args.sentence or []) if s.strip()]
    if not sentences:
        raise CommandError("--text needs at least one non-empty --sentence")
    if args.html and Path(args.html).suffix.lower() not in (".html", ".htm"):
        raise CommandError(f"--html must name a .html file, got {args.html!r}")
    names = method_names(args.method)
    from .explain import parse_targets

    targets = parse_targets(args.target, len(sentences))
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CommandError(f"unknown --device {args.device!r}") from None
    loaded = _shipped(sentences, args.baseline) if args.model == SHIPPED else _huggingface(
        args.model, sentences, args.baseline)
    model = loaded.model.to(device)
    inputs = loaded.inputs.to(device)
    from ..text.classifier import ClassifierExplainer
    from ..text.model import HFModel

    adapter = HFModel(model, embeddings=loaded.embeddings)
    with torch.no_grad():
        probabilities = adapter(inputs.input_ids, inputs.attention_mask).softmax(-1)
    classes = probabilities.shape[-1]
    if targets is not None and max(targets) >= classes:
        raise CommandError(f"--target {max(targets)} is out of range: the model has {classes} classes")
    target = torch.tensor(targets, device=device) if targets is not None else probabilities.argmax(-1)
    results: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for name in names:
        try:
            explainer = ClassifierExplainer(adapter, name, tokenizer=loaded.tokenizer, baseline=loaded.baseline,
                                            granularity=args.granularity)
            start = time.perf_counter()
            scores = explainer.attribute(inputs, target, batch_size=args.batch_size, **_options(name, args))
            seconds[name] = time.perf_counter() - start
        except (ValueError, TypeError) as error:
            raise CommandError(f"{name}: {' '.join(str(error).split())}") from None
        results[name] = scores.scores.detach().cpu()

    colour = _colour(args.colour)
    print(f"model {args.model} ({type(model).__name__}, {classes} classes: {', '.join(loaded.labels)})")
    for note in loaded.notes:
        print(f"note: {note}")
    width = max(len(n) for n in names)
    page: list[str] = []
    mask = inputs.attention_mask.cpu() != 0
    tokens = inputs.tokens or [[str(int(i)) for i in row] for row in inputs.input_ids.cpu()]
    for i, sentence in enumerate(sentences):
        c = int(target[i])
        p = float(probabilities[i, c])
        head = f"sentence {i + 1}: {sentence!r}: explaining class {c} ({loaded.labels[c]}, p={p:.3f})"
        print(head)
        page.append(f"<h3>{html.escape(head)}</h3>")
        keep = mask[i]
        row_tokens = [t for t, k in zip(tokens[i], keep.tolist()) if k]
        for name in names:
            row = results[name][i][keep]
            time_ms = 1000 * seconds[name] / len(sentences)
            print(f"  {name:<{width}}  {tokens_ansi(row_tokens, row, colour=colour)}")
            page.append(tokens_html(row_tokens, row, title=f"{name} ({time_ms:.0f} ms)"))
    timing = ", ".join(f"{n} {1000 * seconds[n] / len(sentences):.0f}" for n in names)
    print(f"ms per sentence: {timing}")
    if args.html:
        Path(args.html).write_text(
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>attrib explain --text</title></head>\n'
            f"<body>\n<h2>{html.escape(args.model)}</h2>\n" + "\n".join(page) + "\n</body></html>\n",
            encoding="utf-8",
        )
        print(f"wrote {args.html}")
    sys.stdout.flush()
    return 0
