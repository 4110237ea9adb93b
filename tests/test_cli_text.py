"""``attrib explain --text``: a saved tiny BERT and the shipped text classifier, end to end; bad arguments."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attrib.cli import main
from attrib.data import PAD_ID, encode, load_model
from attrib.methods.feature_ablation import FeatureAblation
from attrib.text.classifier import ClassifierExplainer
from attrib.text.tokens import TokenInputs

from .hf_models import tiny_bert_classifier, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
_PLAIN = re.compile(r"(\S+?)\[([+-][0-9.e+-]+|nan)\]")


def _attrib(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "attrib", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _method_lines(stdout: str) -> list[tuple[str, list[tuple[str, float]]]]:
    """``(method, [(token, score), ...])`` of every printed method line (plain output)."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("  ") and "[" in line:
            name, _, rest = line.strip().partition("  ")
            out.append((name, [(t, float(v)) for t, v in _PLAIN.findall(rest)]))
    return out


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert_classifier(3).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_saved_huggingface_classifier_in_a_subprocess(saved_bert: Path, tmp_path: Path) -> None:
    sentences = ["the movie was not good .", "alice lives in <paris> & rome"]
    run = _attrib("explain", "--text", "--model", str(saved_bert), "--sentence", sentences[0], "--sentence",
                  sentences[1], "--method", "ig,feature_ablation", "--target", "1", "--n-steps", "16",
                  "--html", "out.html", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # no loading bars, no warnings
    assert "BertForSequenceClassification" in run.stdout and "\x1b" not in run.stdout  # not a terminal: plain
    lines = _method_lines(run.stdout)
    assert [name for name, _ in lines] == ["integrated_gradients", "feature_ablation"] * 2

    # the printed scores are the explainer's, token for token
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(saved_bert, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_bert, local_files_only=True)
    inputs = TokenInputs.from_texts(tokenizer, sentences, truncation=True)
    expected = {
        "integrated_gradients": ClassifierExplainer(model, "integrated_gradients", tokenizer=tokenizer).attribute(
            inputs, torch.tensor([1, 1]), n_steps=16),
        "feature_ablation": ClassifierExplainer(model, "feature_ablation", tokenizer=tokenizer).attribute(
            inputs, torch.tensor([1, 1])),
    }
    assert inputs.tokens is not None
    for k, (name, printed) in enumerate(lines):
        i = k // 2
        keep = inputs.attention_mask[i] != 0
        tokens = [t for t, on in zip(inputs.tokens[i], keep.tolist()) if on]
        scores = expected[name].scores[i][keep].tolist()
        assert [t for t, _ in printed] == tokens
        assert [v for _, v in printed] == pytest.approx(scores, rel=1e-3, abs=1e-6)
        assert tokens[0] == "[CLS]" and printed[0][1] == 0.0  # special tokens are kept and score 0
    page = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<span") == 2 * sum(
        int(m.sum()) for m in inputs.attention_mask)
    assert html.escape(repr(sentences[1])) in page and "<paris>" not in page  # the heading is escaped


def test_shipped_text_classifier_with_colour(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sentence = "the plot was not bad and the cast was superb"
    status = main(["explain", "--text", "--model", "text-classifier", "--sentence", sentence,
                   "--method", "ablation", "--colour", "always"])
    out = capsys.readouterr().out
    assert status == 0
    assert "explaining class 1 (positive" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  feature_ablation"))
    words = sentence.split()
    assert line.count("\x1b[0m") == len(words)
    shown = re.findall(r"\x1b\[38;2;\d+;\d+;\d+m(.*?)\x1b\[0m", line)
    assert shown == words

    status = main(["explain", "--text", "--model", "text-classifier", "--sentence", sentence,
                   "--method", "feature_ablation", "--colour", "never"])
    printed = _method_lines(capsys.readouterr().out)[0][1]
    # the same as FeatureAblation on the shipped model with <pad> as reference and the mask passed
    model = load_model("text-classifier")
    ids = encode(sentence).unsqueeze(0)
    mask = torch.ones_like(ids)
    direct = FeatureAblation(model).attribute(ids, 1, baselines=PAD_ID, additional_forward_args=(mask,))
    assert [v for _, v in printed] == pytest.approx(direct[0].tolist(), rel=1e-3, abs=1e-6)


def test_unknown_words_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--text", "--model", "text-classifier", "--sentence", "a zorblax film",
                 "--method", "saliency", "--colour", "never"]) == 0
    out = capsys.readouterr().out
    assert "read as <unk>: zorblax" in out
    assert [t for t, _ in _method_lines(out)[0][1]] == ["a", "<unk>", "film"]


BAD_TEXT_ARGUMENTS = [
    (["--model", "text-classifier"], "at least one non-empty --sentence"),
    (["--model", "text-classifier", "--sentence", "good", "--method", "gradcam"], "unknown text method"),
    (["--model", "text-classifier", "--sentence", "good", "--target", "2"], "out of range"),
    (["--model", "text-classifier", "--sentence", "good", "--sentence", "bad", "--target", "0,1,1"], "--target"),
    (["--model", "text-classifier", "--sentence", "good", "--image", "x.png"], "--image is for images"),
    (["--model", "text-classifier", "--sentence", "good", "--html", "out.txt"], ".html"),
    (["--model", "text-classifier", "--sentence", "good", "--baseline", "mask"], "--baseline"),
    (["--model", "text-classifier", "--sentence", " ".join(["good"] * 40)], "at most 32"),
    (["--model", "no/such/dir", "--sentence", "good"], "neither 'text-classifier' nor a directory"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_TEXT_ARGUMENTS, ids=[" ".join(a)[:60] for a, _ in BAD_TEXT_ARGUMENTS])
def test_bad_text_arguments_give_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(["explain", "--text", *argv])
    err = capsys.readouterr().err
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out.txt").exists()


def test_text_options_need_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--model", "text-classifier", "--sentence", "good", "--image", "x.png"]) == 2
    assert "need --text" in capsys.readouterr().err
    assert main(["explain", "--model", "text-classifier", "--sentence", "good"]) == 2
    assert "--image is required" in capsys.readouterr().err


def test_broken_model_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert main(["explain", "--text", "--model", str(tmp_path), "--sentence", "good"]) == 2
    err = capsys.readouterr().err
    assert "cannot load a sequence classifier" in err and len(err.strip().splitlines()) == 1
