"""Metrics of attribution maps: bind the data first, score maps second.

>>> hits = PointingGame(masks, tolerance=15)(maps)          # (N,) bool
>>> auc = Deletion(model, images, target=labels)(maps)     # (N,), lower is better
>>> auc = TokenDeletion(model, input_ids, attention_mask=mask)(token_scores)   # the same over tokens

Every metric has ``higher_is_better`` and returns one score per example, so
scores of several shards concatenate and their means (and pointing-game
counts) reduce across processes.
"""

from .base import Metric
from .completeness import CompletenessGap
from .deletion import Deletion, Insertion
from .infidelity import Infidelity
from .pointing_game import PointingGame, PointingGameAccuracy, pointing_game_accuracy
from .randomization import ParameterRandomization
from .sensitivity import SensitivityMax
from .sparseness import Sparseness
from .token_deletion import TokenDeletion, TokenInsertion

__all__ = [
    "CompletenessGap",
    "Deletion",
    "Infidelity",
    "Insertion",
    "Metric",
    "ParameterRandomization",
    "PointingGame",
    "PointingGameAccuracy",
    "SensitivityMax",
    "Sparseness",
    "TokenDeletion",
    "TokenInsertion",
    "pointing_game_accuracy",
]
