"""Ranking metrics over the stored candidate sets (column 0 = the true item).

Ties are broken pessimistically: a candidate scoring exactly as high as the truth ranks above
it, so a model that scores everything equally gets Hit@1 = 0, not 1.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)


def target_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of column 0 in each row of ``scores`` ``(U, C)``; higher score = better."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (users, candidates), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    truth = scores[:, :1]
    return (scores[:, 1:] >= truth).sum(axis=1)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Hit@k, NDCG@k and MRR from 0-based ranks of the true item."""
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    out: dict[str, float] = {"users": float(n)}
    if n == 0:
        return out
    for k in ks:
        hit = ranks < k
        out[f"hit@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out["mrr"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def hit_interval(hits: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval for a hit rate (used for Hit@1 on samples of users)."""
    hits = np.asarray(hits, dtype=np.float64)
    n = len(hits)
    if n == 0:
        return (0.0, 0.0)
    p = hits.mean()
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(centre - half), float(centre + half))


def metrics_from_columns(columns: dict[str, np.ndarray]) -> dict[str, object]:
    """Metrics from per-user columns: ``rank`` (0-based rank of the truth) gives Hit@k / NDCG@k /
    MRR with a Wilson 95% interval on Hit@1; ``gen_hit`` / ``gen_no_match`` give generation exact
    match and the share of answers matching no candidate."""
    out: dict[str, object] = {}
    if "rank" in columns:
        ranks = np.asarray(columns["rank"], dtype=np.int64)
        out.update(ranking_metrics(ranks))
        out["hit@1_ci95"] = list(hit_interval(ranks == 0))
    if "gen_hit" in columns:
        hits = np.asarray(columns["gen_hit"], dtype=bool)
        out["users"] = float(len(hits))
        out["gen_hit@1"] = float(hits.mean()) if len(hits) else None
        out["gen_no_match"] = float(np.asarray(columns["gen_no_match"], dtype=bool).mean()) if len(hits) else None
    return out


def catalogue_metrics(ranked: np.ndarray, truths: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Full-catalogue Recall@k and NDCG@k of ranked item lists ``(U, L)`` (best first) against
    one true item per user; a truth missing from a list counts as a miss at every k."""
    ranked, truths = np.asarray(ranked), np.asarray(truths)
    hit = ranked == truths[:, None]
    pos = np.where(hit.any(1), hit.argmax(1), np.iinfo(np.int64).max)
    out: dict[str, float] = {"users": float(len(truths))}
    for k in ks:
        within = pos < k
        out[f"recall@{k}"] = float(within.mean()) if len(truths) else 0.0
        out[f"ndcg@{k}"] = float(np.where(within, 1.0 / np.log2(np.minimum(pos, k) + 2.0), 0.0).mean()) if len(truths) else 0.0
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over paired per-user values (hits, log-likelihoods) with a seeded
    percentile-bootstrap 95% interval: ``{"diff", "low", "high", "users"}``."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty 1-d arrays, got shapes {np.shape(a)} and {np.shape(b)}")
    gen = np.random.default_rng(seed)
    means = np.array([d[gen.integers(0, len(d), len(d))].mean() for _ in range(n_boot)])
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "users": int(len(d))}
