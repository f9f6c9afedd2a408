from allmrec.eval.metrics import hit_interval, ranking_metrics, target_ranks

__all__ = ["hit_interval", "ranking_metrics", "target_ranks"]
