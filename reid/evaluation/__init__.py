"""Retrieval evaluation: distance matrices, exact CMC/mAP/mINP, k-reciprocal re-ranking.

The three entry points are imported on first use, so that ``reid.evaluation.distance`` (numpy distances for
the video tools) loads without torch."""

__all__ = ["compute_distance_matrix", "evaluate_rank", "re_ranking"]


def __getattr__(name: str):
    if name == "compute_distance_matrix":
        from .distance import compute_distance_matrix

        return compute_distance_matrix
    if name == "evaluate_rank":
        from .rank import evaluate_rank

        return evaluate_rank
    if name == "re_ranking":
        from .rerank import re_ranking

        return re_ranking
    raise AttributeError(f"module 'reid.evaluation' has no attribute {name!r}")
