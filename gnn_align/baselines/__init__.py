"""Optimisation baselines the learned aligner is measured against, all on :class:`PermutationSpec`."""

from .activation_matching import CorrelationStats, activation_matching
from .sinkhorn_rebasin import sinkhorn_rebasin
from .ste import ste_rebasin
from .weight_matching import MatchResult, matching_objective, weight_matching

__all__ = ["CorrelationStats", "MatchResult", "activation_matching", "matching_objective", "sinkhorn_rebasin",
           "ste_rebasin", "weight_matching"]
