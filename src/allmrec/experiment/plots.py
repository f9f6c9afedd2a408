"""PNG plots of an experiment, drawn from ``results.json`` alone (matplotlib, ``Agg`` backend).

* ``overall.png``: Hit@1 per method with its 95% interval (paper Table 1), paper values as markers;
* ``cold_warm.png``: cold vs warm Hit@1 per method (Table 2);
* ``few_shot.png``: Hit@1 against the number of training users K per method (Table 4);
* ``efficiency.png``: training seconds per step and inference seconds per user (Table 8);
* ``curves/<variant>.png``: a stage-2 learning curve (validation Hit@1 / NDCG@10 against step)
  for every trained variant whose record holds one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allmrec.align.stage2.config import MODE_LABELS
from allmrec.experiment.report import ROW_ORDER, paper_value


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write every plot the results support; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for fn in (_overall, _cold_warm, _few_shot, _efficiency):
        path = fn(results, out_dir)
        if path is not None:
            written.append(path)
    written += _curves(results, out_dir / "curves")
    return written


def _done(results: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    plan = results.get("plan", list(results.get("units", {})))
    units = results.get("units", {})
    out = [units[uid] for uid in plan if uid in units and units[uid].get("status") == "done" and all(units[uid].get(k) == v for k, v in match.items())]
    return sorted(out, key=lambda u: ROW_ORDER.index(u["row"]) if u.get("row") in ROW_ORDER else len(ROW_ORDER))


def _save(fig, path: Path) -> Path:
    from allmrec.utils.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:  # a crash mid-write leaves the previous plot, not half a PNG
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _overall(results: dict[str, Any], out_dir: Path) -> Path | None:
    units = [u for u in _done(results, table="overall") if "hit@1" in u.get("metrics", {})]
    if not units:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(units) + 2), 4))
    xs = range(len(units))
    hits = [u["metrics"]["hit@1"] for u in units]
    lo = [h - u["metrics"].get("hit@1_ci95", [h, h])[0] for h, u in zip(hits, units)]
    hi = [u["metrics"].get("hit@1_ci95", [h, h])[1] - h for h, u in zip(hits, units)]
    ax.bar(xs, hits, yerr=[lo, hi], capsize=3, color="tab:blue", label="this run (95% CI)")
    pd = results.get("paper_dataset")
    paper = [paper_value("overall", u.get("row", ""), pd) for u in units]
    if any(p is not None for p in paper):
        ax.scatter([x for x, p in zip(xs, paper) if p is not None], [p for p in paper if p is not None], marker="D", color="tab:red", zorder=3,
                   label=f"paper ({pd})")
    ax.set_xticks(list(xs), [_short(u.get("label", "")) for u in units], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Hit@1")
    ax.set_title(f"{results.get('dataset')}: overall (users: {int(units[0]['metrics'].get('users', 0))})")
    ax.legend(fontsize=8)
    return _save(fig, out_dir / "overall.png")


def _cold_warm(results: dict[str, Any], out_dir: Path) -> Path | None:
    cold = {(u["variant"], u["method"]): u for u in _done(results, table="cold_items")}
    warm = {(u["variant"], u["method"]): u for u in _done(results, table="warm_items")}
    keys = [k for k in dict.fromkeys([*cold, *warm]) if "hit@1" in (cold.get(k) or warm.get(k)).get("metrics", {})]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys) + 2), 4))
    width = 0.38
    for j, (name, group, colour) in enumerate((("cold", cold, "tab:blue"), ("warm", warm, "tab:orange"))):
        xs = [i + (j - 0.5) * width for i in range(len(keys))]
        ys = [group[k]["metrics"].get("hit@1", 0.0) if k in group else 0.0 for k in keys]
        ax.bar(xs, ys, width, label=f"{name} (this run)", color=colour)
        pd = results.get("paper_dataset")
        paper = [paper_value(f"{name}_items", (cold.get(k) or warm.get(k)).get("row", ""), pd) for k in keys]
        pts = [(x, p) for x, p in zip(xs, paper) if p is not None]
        if pts:
            ax.scatter([x for x, _ in pts], [p for _, p in pts], marker="D", color="black" if name == "cold" else "tab:red", zorder=3, s=18,
                       label=f"{name} (paper, {pd})")
    ax.set_xticks(range(len(keys)), [_short((cold.get(k) or warm.get(k)).get("label", "")) for k in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Hit@1")
    ax.set_title(f"{results.get('dataset')}: cold vs warm items")
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "cold_warm.png")


def _few_shot(results: dict[str, Any], out_dir: Path) -> Path | None:
    units = [u for u in results.get("units", {}).values() if str(u.get("table", "")).startswith("few_shot_") and u.get("status") == "done"
             and "hit@1" in u.get("metrics", {})]
    if not units:
        return None
    series: dict[str, list[tuple[int, float]]] = {}
    for u in units:
        series.setdefault(u.get("label", u.get("method")), []).append((int(u["table"].rsplit("_", 1)[1]), u["metrics"]["hit@1"]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([k for k, _ in pts], [h for _, h in pts], marker="o", label=_short(label))
    ax.set_xlabel("training users K")
    ax.set_ylabel("Hit@1")
    ax.set_title(f"{results.get('dataset')}: few-shot training")
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "few_shot.png")


def _efficiency(results: dict[str, Any], out_dir: Path) -> Path | None:
    u = results.get("units", {}).get("efficiency")
    if not u or u.get("status") != "done":
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, part, field, title in ((axes[0], "train", "seconds_per_step", f"training, s / step (batch {u.get('batch_size')})"),
                                   (axes[1], "inference", "seconds_per_user", "inference, s / user")):
        items = [(k, v[field]) for k, v in sorted(u.get(part, {}).items()) if v.get(field) is not None]
        ax.bar(range(len(items)), [v for _, v in items], color=["tab:red" if k == "tallrec" else "tab:blue" for k, _ in items])
        ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=20, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{results.get('dataset')}: A-LLMRec vs TALLRec, same LLM and machine", fontsize=10)
    return _save(fig, out_dir / "efficiency.png")


def _curves(results: dict[str, Any], out_dir: Path) -> list[Path]:
    written = []
    for u in results.get("units", {}).values():
        curve = (u.get("stage2") or {}).get("curve") if u.get("kind") == "train" and u.get("status") == "done" else None
        if not curve:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        steps = [p[0] for p in curve]
        ax.plot(steps, [p[1] for p in curve], marker="o", label="validation Hit@1")
        ax.plot(steps, [p[2] for p in curve], marker="s", label="validation NDCG@10")
        ax.set_xlabel("stage-2 step")
        ax.set_title(f"{results.get('dataset')}: {u.get('variant')} stage 2 ({u['stage2'].get('objective')})", fontsize=9)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / f"{u.get('variant')}.png"))
    return written


def _short(label: str) -> str:
    return label.replace(MODE_LABELS["best"], "best").replace(MODE_LABELS["paper"], "paper LM")
