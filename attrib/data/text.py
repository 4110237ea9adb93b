"""Synthetic sentiment sequences whose deciding tokens are known: the data of the shipped text classifier.

A sequence is a run of words from a small vocabulary (:data:`VOCAB`), padded
with ``<pad>`` (id :data:`PAD_ID`) to a common length. It holds one to three
*cue phrases*: a cue word (:data:`POSITIVE` or :data:`NEGATIVE`), possibly
right after a negator (:data:`NEGATORS`), which flips its polarity
("not good" is negative, "never dull" positive). Everything else is filler
(:data:`FILLERS`), and some negators stand before a filler, where they mean
nothing; so a model has to read "not" by what follows it.

The label (:data:`LABELS`: 0 negative, 1 positive) is the sign of the sum of
the phrases' polarities; the draw keeps a strict majority (one phrase; two
that agree; three of which at least two agree). The *deciding* tokens are
those of the phrases that agree with the label (the cue word and its
negator): the evidence a faithful explanation should point at. A phrase
against the label is contrary evidence (its tokens carry the opposite
``polarity``), fillers and stray negators are irrelevant.

Everything is drawn from a private ``torch.Generator`` seeded with ``seed``:
the same arguments give bit-identical batches, and torch's global RNG is
never touched.

Example:
    >>> batch = make_sequences(4, seed=0)
    >>> batch.input_ids.shape, batch.attention_mask.shape, batch.deciding.shape
    (torch.Size([4, 24]), torch.Size([4, 24]), torch.Size([4, 24]))
    >>> decode(batch.input_ids[0])                              # e.g. 'the plot was not bad and the cast ...'
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SPECIALS: tuple[str, ...] = ("<pad>", "<unk>")
NEGATORS: tuple[str, ...] = ("not", "never")
POSITIVE: tuple[str, ...] = (
    "good", "great", "excellent", "superb", "lovely", "wonderful", "brilliant", "fine", "charming", "moving",
)
NEGATIVE: tuple[str, ...] = (
    "bad", "awful", "terrible", "poor", "dull", "boring", "horrible", "weak", "clumsy", "bland",
)
FILLERS: tuple[str, ...] = (
    "the", "a", "an", "this", "that", "film", "movie", "plot", "story", "cast", "actor", "actress", "director",
    "script", "scene", "ending", "music", "camera", "was", "is", "seems", "felt", "and", "but", "or", "so",
    "it", "of", "in", "on", "with", "for", "very", "quite", "rather", "really", "long", "short", "old", "new",
    "first", "second", "red", "blue", "city", "night", "day", "house", "car", "dog",
)
VOCAB: tuple[str, ...] = SPECIALS + NEGATORS + POSITIVE + NEGATIVE + FILLERS
"""Every token, in id order: ``VOCAB[i]`` is the word of id ``i``."""

PAD_ID = 0
UNK_ID = 1
LABELS: tuple[str, ...] = ("negative", "positive")
MAX_LENGTH = 24
"""The default padded length of :func:`make_sequences`."""

_INDEX = {word: i for i, word in enumerate(VOCAB)}
_NEG0, _POS0 = len(SPECIALS), len(SPECIALS) + len(NEGATORS)
_NEGATIVE0, _FILLER0 = _POS0 + len(POSITIVE), _POS0 + len(POSITIVE) + len(NEGATIVE)


@dataclass(frozen=True)
class SequenceBatch:
    """A generated batch of ``N`` sequences padded to length ``L``.

    Attributes:
        input_ids: ``(N, L)`` long token ids; :data:`PAD_ID` after each sequence's end.
        attention_mask: ``(N, L)`` bool: True on the real tokens, False on the padding.
        lengths: ``(N,)`` long: the number of real tokens (they come first).
        labels: ``(N,)`` long: 0 negative, 1 positive (:data:`LABELS`).
        deciding: ``(N, L)`` bool: the tokens of the cue phrases that agree with the label.
        polarity: ``(N, L)`` long: +1 / -1 on the tokens of each cue phrase (its polarity after
            negation), 0 on fillers, stray negators and padding.
    """

    input_ids: Tensor
    attention_mask: Tensor
    lengths: Tensor
    labels: Tensor
    deciding: Tensor
    polarity: Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int | slice | Tensor) -> SequenceBatch:
        """The sequences ``index`` (an int keeps a batch of one)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return SequenceBatch(*(getattr(self, f)[index] for f in self.__dataclass_fields__))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def make_sequences(
    n: int,
    *,
    seed: int = 0,
    max_length: int = MAX_LENGTH,
    min_length: int = 6,
    negation: float = 0.35,
    stray_negators: float = 0.3,
) -> SequenceBatch:
    """Generate ``n`` labelled sequences with their deciding-token masks.

    Args:
        n: number of sequences.
        seed: seed of the private generator; the batch is a function of all arguments.
        max_length: the padded length ``L`` and the longest sequence (at least 6).
        min_length: the shortest sequence (6 to ``max_length``); lengths are uniform in between.
        negation: the probability that a cue phrase is negated.
        stray_negators: the probability that a sequence holds a negator before a filler (a distractor).

    Returns:
        a :class:`SequenceBatch`.
    """
    n = _check_int("n", n, 1)
    max_length = _check_int("max_length", max_length, 6)
    min_length = _check_int("min_length", min_length, 6)
    if min_length > max_length:
        raise ValueError(f"min_length must be at most max_length ({max_length}), got {min_length}")
    for name, p in (("negation", negation), ("stray_negators", stray_negators)):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= float(p) <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator().manual_seed(int(seed))

    # All draws happen here, in bulk; the loop below only assembles lists (data generation, not a hot path).
    labels = torch.randint(2, (n,), generator=g)
    lengths = torch.randint(min_length, max_length + 1, (n,), generator=g)
    n_cues = torch.randint(1, 4, (n,), generator=g)
    against = (n_cues == 3) & (torch.rand(n, generator=g) < 0.5)  # the third phrase disagrees with the label
    negated = torch.rand(n, 3, generator=g) < float(negation)
    cue_words = torch.randint(len(POSITIVE), (n, 3), generator=g)
    negator_words = torch.randint(len(NEGATORS), (n, 4), generator=g)
    stray = torch.rand(n, generator=g) < float(stray_negators)
    fillers = torch.randint(len(FILLERS), (n, max_length), generator=g) + _FILLER0
    order = torch.rand(n, max_length, generator=g).argsort(1)

    input_ids = torch.full((n, max_length), PAD_ID, dtype=torch.long)
    polarity = torch.zeros(n, max_length, dtype=torch.long)
    rows = zip(
        labels.tolist(), lengths.tolist(), n_cues.tolist(), against.tolist(), negated.tolist(),
        cue_words.tolist(), negator_words.tolist(), stray.tolist(), fillers.tolist(), order.tolist(),
    )
    for i, (label, length, k, contra, neg, cue, negator, has_stray, filler, perm) in enumerate(rows):
        # units: lists of (token id, polarity); a negator only ever opens a unit, so it precedes a cue
        # word exactly when it belongs to that cue's phrase
        units: list[list[tuple[int, int]]] = []
        for j in range(k):
            sign = (1 if label == 1 else -1) * (-1 if contra and j == 2 else 1)
            positive_word = (sign > 0) != neg[j]  # a negated phrase uses a word of the opposite polarity
            word = (_POS0 if positive_word else _NEGATIVE0) + cue[j]
            unit = [(word, sign)]
            if neg[j]:
                unit.insert(0, (_NEG0 + negator[j], sign))
            units.append(unit)
        used = sum(len(u) for u in units)
        f = 0
        if has_stray and used + 2 <= length:
            units.append([(_NEG0 + negator[3], 0), (filler[f], 0)])
            used, f = used + 2, f + 1
        while used < length:
            units.append([(filler[f], 0)])
            used, f = used + 1, f + 1
        ranks = sorted(range(len(units)), key=lambda u: perm[u])
        tokens = [t for u in ranks for t in units[u]]
        input_ids[i, :length] = torch.tensor([t for t, _ in tokens])
        polarity[i, :length] = torch.tensor([p for _, p in tokens])
    positions = torch.arange(max_length)
    attention_mask = positions < lengths.unsqueeze(1)
    deciding = polarity == (2 * labels - 1).unsqueeze(1)
    return SequenceBatch(input_ids, attention_mask, lengths, labels, deciding, polarity)


def encode(text: str | Sequence[str], *, length: int | None = None) -> Tensor:
    """Token ids ``(T,)`` of whitespace-separated ``text`` (or a list of words), padded to ``length`` if given.

    Unknown words become ``<unk>``. Example: ``encode("not bad at all")``.
    """
    words = text.split() if isinstance(text, str) else list(text)
    ids = [_INDEX.get(w.lower(), UNK_ID) for w in words]
    if length is not None:
        length = _check_int("length", length, 1)
        if len(ids) > length:
            raise ValueError(f"text has {len(ids)} tokens, more than length={length}")
        ids += [PAD_ID] * (length - len(ids))
    return torch.tensor(ids, dtype=torch.long)


def decode(ids: Tensor | Sequence[int], *, keep_padding: bool = False) -> str:
    """The words of a ``(T,)`` sequence of token ids, space-separated, padding dropped unless ``keep_padding``."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if values and isinstance(values[0], list):
        raise ValueError("decode takes one sequence (T,); decode each row of a batch")
    for v in values:
        if not 0 <= int(v) < len(VOCAB):
            raise ValueError(f"token id {v} is outside the vocabulary (0..{len(VOCAB) - 1})")
    return " ".join(VOCAB[int(v)] for v in values if keep_padding or int(v) != PAD_ID)
