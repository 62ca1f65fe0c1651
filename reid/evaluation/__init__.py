"""Retrieval evaluation: distance matrices, exact CMC/mAP/mINP, k-reciprocal re-ranking."""

from .distance import compute_distance_matrix
from .rank import evaluate_rank
from .rerank import re_ranking

__all__ = ["compute_distance_matrix", "evaluate_rank", "re_ranking"]
