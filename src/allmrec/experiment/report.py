"""The experiment report: paper-style Markdown tables built from ``results.json`` alone.

Every number comes from a unit record in ``results.json`` (``units.<id>.metrics`` and friends);
each row names its unit, whose ``units/<id>.json`` also keeps the per-user ranks. The paper's own
numbers (``allmrec/configs/paper_results.yaml``) are shown in a separate column, labelled with
the paper's table and dataset.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from allmrec.align.stage2.config import MODE_LABELS
from allmrec.experiment.store import invocations
from allmrec.utils.io import atomic_path

# Row order of the paper's tables (then the order of the plan).
ROW_ORDER = ["ncf", "nextitnet", "gru4rec", "sasrec", "morec", "ctrl", "recformer", "llm_only", "tallrec", "mlp_llm", "allmrec", "allmrec_sbert",
             "no_matching", "no_recon", "no_rec", "frozen_encoder", "no_user", "no_joint", "random_joint"]
AGNOSTIC_ORDER = ["sasrec", "allmrec_sasrec", "nextitnet", "allmrec_nextitnet", "gru4rec", "allmrec_gru4rec", "ncf", "allmrec_ncf"]
LEFT_OUT = ("CTRL and RECFORMER (paper Tables 1-3 and 5) are not implemented in this project and are left out of every table; "
            "their paper numbers are in `allmrec/configs/paper_results.yaml`.")
MODE_NOTE = ("**A-LLMRec (best mode: fusion + LLM residual)** is this project's best stage 2 (`docs/modes.md`). Its prior is a fusion "
             "with no LLM: the CF model's score, a text tower and text / stage-1 similarities, fitted on the validation items of "
             "training users that stage 2 does not use. On top of it, a listwise head scores the candidates from the frozen LLM's "
             "hidden states. That LLM path is kept only if it beats the prior on held-out training users (`stage2/model.json`: "
             "`llm_path`); otherwise the fusion answers alone, with no LLM forward (then its inference time is the fusion's). "
             "It ranks, but does not generate titles. **A-LLMRec (paper: LM loss)** is the paper's stage 2 (next-title "
             "log-likelihood, eq. 8); its Hit@1 here ranks the candidates by likelihood, `gen Hit@1` (when run) is the paper's "
             "generate-and-match protocol.")


@lru_cache(maxsize=1)
def paper_reference() -> dict[str, Any]:
    """The paper's numbers (``allmrec/configs/paper_results.yaml``)."""
    text = (resources.files("allmrec") / "configs" / "paper_results.yaml").read_text()
    return yaml.safe_load(text)


def paper_value(table: str, row: str, dataset: str | None) -> float | None:
    if dataset is None:
        return None
    entry = paper_reference()["tables"].get(table, {}).get("values", {}).get(row, {})
    return entry.get(dataset)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(build_report(results))
    return path


def build_report(results: dict[str, Any]) -> str:
    """The Markdown report of an experiment's ``results.json``."""
    r = _Report(results)
    return r.build()


class _Report:
    def __init__(self, results: dict[str, Any]) -> None:
        self.res = results
        self.units: dict[str, dict[str, Any]] = results.get("units", {})
        self.plan: list[str] = results.get("plan", list(self.units))
        self.pd: str | None = results.get("paper_dataset")
        self.lines: list[str] = []
        self.aliases: dict[str, str] = {}

    # ---- helpers -------------------------------------------------------------------------------------
    def done(self, **match: Any) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for uid in self.plan:
            u = self.units.get(uid)
            if u and u.get("status") == "done" and all(u.get(k) == v for k, v in match.items()):
                out.append((uid, u))
        return out

    def p(self, text: str = "") -> None:
        self.lines.append(text)

    def label(self, u: dict[str, Any]) -> str:
        label = u.get("label", u.get("method", "?"))
        if u.get("alias_of"):
            self.aliases[u["variant"]] = u["alias_of"]
            label += " †"
        return label

    def sort(self, rows: list[tuple[str, dict[str, Any]]], order: list[str] = ROW_ORDER) -> list[tuple[str, dict[str, Any]]]:
        def key(item: tuple[str, dict[str, Any]]) -> tuple[int, int]:
            uid, u = item
            row = u.get("row", "")
            return (order.index(row) if row in order else len(order), self.plan.index(uid) if uid in self.plan else 0)

        return sorted(rows, key=key)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.p("| " + " | ".join(header) + " |")
        self.p("|" + "---|" * len(header))
        for row in rows:
            self.p("| " + " | ".join(row) + " |")
        self.p()

    # ---- sections --------------------------------------------------------------------------------------
    def build(self) -> str:
        res = self.res
        self.p(f"# Experiment `{res.get('experiment')}`: {res.get('dataset')}")
        self.p()
        self.p(f"Generated from `results.json` ({res.get('updated', '')}); every number below is read from it (`units.<id>` of the row's unit; "
               "`units/<id>.json` also holds the per-user ranks). Machine: " + str(res.get("machine", "?")) + ".")
        self.p()
        self.setup()
        self.metric_table("overall", "Overall (paper Table 1)")
        self.cold_warm()
        self.metric_table("cold_users", "Cold users (paper Table 3)")
        self.few_shot()
        self.metric_table("cross_domain", "Cross-domain (paper Table 5)", paper_dataset="Movies and TV -> Video Games")
        self.metric_table("ablation_stage1", "Stage-1 ablations (paper Table 6)")
        self.metric_table("ablation_stage2", "Stage-2 ablations (paper Table 7)")
        self.efficiency()
        self.metric_table("model_agnostic", "Model-agnostic (paper Table 9)", order=AGNOSTIC_ORDER)
        self.genres()
        self.training()
        self.not_run()
        if self.aliases:
            self.p("† Same configuration as another variant (" + ", ".join(f"`{a}` = `{b}`" for a, b in sorted(self.aliases.items()))
                   + "): its model is reused, and users it already scored are not scored again.")
            self.p()
        if res.get("plots"):
            self.p("## Plots")
            self.p()
            for path in res["plots"]:
                self.p(f"- `{path}`")
            self.p()
        return "\n".join(self.lines).rstrip() + "\n"

    def setup(self) -> None:
        res = self.res
        cfg = res.get("config", {})
        base = cfg.get("base", {})
        llm = (base.get("llm") or {}).get("name_or_path", "default")
        self.p("## Setup")
        self.p()
        self.p(f"- Dataset `{res.get('dataset')}`; CF backbone `{res.get('base_backbone')}`; LLM `{llm}` "
               f"(paper: OPT-6.7B); evaluation on the stored 1 + 19 candidates, split `{cfg.get('eval', {}).get('split', 'test')}`, "
               f"inference mode `{cfg.get('eval', {}).get('mode', 'rank')}`, seeded user samples (sizes in each table's `users` column).")
        if self.pd:
            extra = " (a different dataset: the nearest the paper has; compare trends, not values)" if res.get("paper_nearest_only") else ""
            self.p(f"- Paper column: the paper's {self.pd} numbers{extra}; the paper trains on all users with OPT-6.7B.")
        else:
            self.p("- No paper column (`paper_dataset: none` or a dataset the paper does not cover).")
        self.p(f"- Variants of MLP-LLM, ablations, model-agnostic and few-shot runs use the {res.get('variant_mode', 'best')} mode.")
        self.p(f"- {MODE_NOTE}")
        self.p("- A-LLMRec (SBERT) feeds q_i instead of the joint embedding for items without training interactions; a user whose "
               "prompt shows no such item gets exactly A-LLMRec's scores (shared, not recomputed), so on data where every item "
               "has training interactions (5-core Beauty, ML-100K) the two rows are equal.")
        if not any(u.get("row") in ("ctrl", "recformer") for u in self.units.values()):  # reports of experiments run before they existed
            self.p(f"- {LEFT_OUT}")
        runs = invocations(res)
        total = sum(float(r.get("seconds", 0.0)) for r in runs)
        self.p(f"- Wall time: {total / 60:.1f} min over {len(runs)} invocation(s) of `allmrec experiment` on this folder "
               f"(last: {float(res.get('this_run_seconds', 0.0)) / 60:.1f} min); the unit records sum to "
               f"{float(res.get('units_seconds', 0.0)) / 60:.1f} min (a unit redone at a larger size records only its last run).")
        self.p()

    def metric_cells(self, m: dict[str, Any], gen: bool) -> list[str]:
        ci = m.get("hit@1_ci95")
        cells = [_f(m.get("hit@1")), f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "-", _f(m.get("ndcg@10")), _f(m.get("mrr"))]
        if gen:
            cells += [_f(m.get("gen_hit@1")), _f(m.get("gen_no_match"))]
        return cells + [_n(m.get("users"))]

    def metric_table(self, table: str, title: str, order: list[str] = ROW_ORDER, paper_dataset: str | None = None) -> None:
        rows = self.sort(self.done(table=table), order)
        if not rows:
            return
        pd = paper_dataset if paper_dataset is not None else self.pd
        gen = any("gen_hit@1" in u.get("metrics", {}) for _, u in rows)
        header = ["method", "Hit@1", "95% CI", "NDCG@10", "MRR"] + (["gen Hit@1", "gen no match"] if gen else []) + ["users"]
        if self.pd:
            ref = paper_reference()["tables"].get(table, {})
            header.append(f"paper ({ref.get('table', '?')}, {pd})")
        header.append("unit")
        body = []
        for uid, u in rows:
            cells = [self.label(u)] + self.metric_cells(u.get("metrics", {}), gen)
            if self.pd:
                cells.append(_f(paper_value(table, u.get("row", ""), pd)))
            body.append(cells + [f"`{uid}`"])
        self.p(f"## {title}")
        self.p()
        if table == "cross_domain":
            u = rows[0][1]
            self.p(f"Trained on `{u.get('source', '?')}`, evaluated on `{u.get('target', '?')}` without training; target items get their "
                   "embeddings from their text through the source's stage 1 (q = f_T^enc(Q); the CF row uses the item table f_I^dec(q) "
                   "in the source CF model; A-LLMRec uses e = f_I^enc(f_I^dec(q)), A-LLMRec (SBERT) uses q).")
            self.p()
        self.table(header, body)

    def cold_warm(self) -> None:
        cold = {(u["variant"], u["method"]): (uid, u) for uid, u in self.done(table="cold_items")}
        warm = {(u["variant"], u["method"]): (uid, u) for uid, u in self.done(table="warm_items")}
        keys = list(dict.fromkeys([*cold, *warm]))
        if not keys:
            return
        first = {k: (cold.get(k) or warm.get(k)) for k in keys}
        ordered = [k for k in keys]
        ordered.sort(key=lambda k: (ROW_ORDER.index(first[k][1].get("row")) if first[k][1].get("row") in ROW_ORDER else 99, self.plan.index(first[k][0])))
        header = ["method", "cold Hit@1", "cold 95% CI", "warm Hit@1", "warm 95% CI", "cold users", "warm users"]
        if self.pd:
            header += [f"paper cold (Table 2, {self.pd})", f"paper warm (Table 2, {self.pd})"]
        header.append("units")
        body = []
        for k in ordered:
            c, w = cold.get(k), warm.get(k)
            u = first[k][1]
            mc, mw = (c[1].get("metrics", {}) if c else {}), (w[1].get("metrics", {}) if w else {})
            cells = [self.label(u), _f(mc.get("hit@1")), _ci(mc), _f(mw.get("hit@1")), _ci(mw), _n(mc.get("users")), _n(mw.get("users"))]
            if self.pd:
                cells += [_f(paper_value("cold_items", u.get("row", ""), self.pd)), _f(paper_value("warm_items", u.get("row", ""), self.pd))]
            cells.append(", ".join(f"`{x[0]}`" for x in (c, w) if x))
            body.append(cells)
        self.p("## Cold and warm items (paper Table 2)")
        self.p()
        self.p("Test item in the bottom (cold) / top (warm) 35% of items by training interactions.")
        self.p()
        self.table(header, body)

    def few_shot(self) -> None:
        tables = sorted({u["table"] for u in self.units.values() if str(u.get("table", "")).startswith("few_shot_") and u.get("status") == "done"},
                        key=lambda t: -int(t.rsplit("_", 1)[1]))
        if not tables:
            return
        header = ["K", "method", "Hit@1", "95% CI", "users"] + ([f"paper (Table 4, {self.pd})"] if self.pd else []) + ["unit"]
        body = []
        for table in tables:
            k = table.rsplit("_", 1)[1]
            for uid, u in self.sort(self.done(table=table)):
                m = u.get("metrics", {})
                cells = [k, self.label(u), _f(m.get("hit@1")), _ci(m), _n(m.get("users"))]
                if self.pd:
                    cells.append(_f(paper_value(table, u.get("row", ""), self.pd)))
                body.append(cells + [f"`{uid}`"])
        self.p("## Few-shot training (paper Table 4)")
        self.p()
        self.p("Every stage (CF model, stage 1, stage 2, TALLRec) trained on K seeded training users only; evaluated on other training users.")
        self.p()
        self.table(header, body)

    def efficiency(self) -> None:
        u = self.units.get("efficiency")
        if not u or u.get("status") != "done":
            return
        self.p("## Efficiency (paper Table 8)")
        self.p()
        self.p(f"Measured in one process on `{u.get('device', '?')}` with the same LLM (`{u.get('llm', '?')}`), data and batch size "
               f"({u.get('batch_size')} prompts per training step; {u.get('train_steps')} timed steps after a 1-step warm-up; inference = "
               f"ranking the 20 candidates of {u.get('users')} test users, one prompt per forward on CPU). Unit `efficiency`.")
        self.p()
        body = []
        for key in sorted(set(u.get("train", {})) | set(u.get("inference", {}))):
            t, i = u.get("train", {}).get(key, {}), u.get("inference", {}).get(key, {})
            body.append([_EFF_LABELS.get(key, key), _f(t.get("seconds_per_step"), 3), _n(t.get("steps")), _f(i.get("seconds_per_user"), 3)])
        self.table(["model", "train s / step", "timed steps", "inference s / user"], body)
        ratios = u.get("ratios", {})
        ref = paper_reference()["tables"]["efficiency"]["values"]
        paper_train = ref["tallrec"]["train_minutes"] / ref["allmrec"]["train_minutes"]
        paper_infer = ref["tallrec"]["inference_s_per_batch"] / ref["allmrec"]["inference_s_per_batch"]
        rows = []
        for name, value in ratios.items():
            part, _, pair = name.partition(": ")
            slow, _, fast = pair.partition(" / ")
            rows.append([f"{part}: {_EFF_LABELS.get(slow, slow)} / {_EFF_LABELS.get(fast, fast)} (this run)", f"{value:.2f}x"])
        rows.append([f"paper (Table 8, Beauty): TALLRec / A-LLMRec training time ({ref['tallrec']['train_minutes']} / {ref['allmrec']['train_minutes']} min)", f"{paper_train:.2f}x"])
        rows.append([f"paper (Table 8, Beauty): TALLRec / A-LLMRec inference time ({ref['tallrec']['inference_s_per_batch']} / {ref['allmrec']['inference_s_per_batch']} s per batch)", f"{paper_infer:.2f}x"])
        self.table(["ratio (higher = A-LLMRec faster)", "value"], rows)
        for note in u.get("notes", []):
            self.p(f"- {note}")
        full = [(uid, x) for uid, x in self.done(kind="train") if x.get("variant") in ("main", "paper", "tallrec")]
        if full:
            self.p()
            self.p("Full training runs of this experiment (their own step counts; stage-2 / TALLRec training time only):")
            self.p()
            body = []
            for uid, x in full:
                part = x.get("stage2") or x.get("tallrec") or {}
                body.append([x["variant"], _n(part.get("steps")), _f(part.get("seconds"), 1), _f(part.get("seconds_per_step"), 3),
                             _llm_path(part.get("llm_path")), f"`{uid}`"])
            self.table(["run", "steps", "seconds", "s / step", "LLM path (stage 2's check)", "unit"], body)

    def genres(self) -> None:
        rows = self.done(kind="genres")
        if not rows:
            return
        self.p("## Favourite genres (paper Section 5.4.4)")
        self.p()
        body = []
        k = None
        for uid, u in rows:
            g = u.get("genres", {})
            k = g.get("k", k)
            body.append([u.get("label", u.get("method")), _f(g.get("precision@k")), _f(g.get("coverage")),
                         _f(g.get("popularity_precision@k")), _f(g.get("copied_list@k")), _n(g.get("users")), f"`{uid}`"])
        self.p(f"The LLM names the user's {k or 3} favourite genres; truth = the {k or 3} genres most watched in the user's history "
               "(the paper shows examples only; these scores are this project's).")
        self.p()
        self.table(["method", "precision@k", "coverage", "popularity precision@k", "copied list@k", "users", "unit"], body)
        for uid, u in rows:
            examples = (u.get("genres") or {}).get("examples", [])[:3]
            if examples:
                self.p(f"Examples, {u.get('label', u.get('method'))}:")
                self.p()
                for ex in examples:
                    gen = " ".join(str(ex.get("generated", "")).split())[:120]
                    self.p(f"- user {ex.get('user')}: truth {ex.get('truth')}, parsed {ex.get('parsed')}, generated \"{gen}\"")
                self.p()

    def training(self) -> None:
        rows = self.done(kind="train")
        if not rows:
            return
        self.p("## Training runs")
        self.p()
        body = []
        for uid, u in rows:
            cf, s1, s2, tr = u.get("cf") or {}, u.get("stage1") or {}, u.get("stage2") or {}, u.get("tallrec") or {}
            cf_cell = f"{cf.get('backbone', '-')} best epoch {cf.get('best_epoch', '-')}, valid NDCG@10 {_f(cf.get('best_valid_ndcg@10'))}" if cf else "-"
            s1_cell = f"{s1.get('epochs', '-')} epochs, {_f(s1.get('seconds'), 1)} s" if s1 else "-"
            if s2:
                s2_cell = f"{s2.get('objective')}{' residual' if s2.get('residual') else ''}, table {s2.get('item_table')}, {s2.get('steps')} steps x {s2.get('batch_size')}, {_f(s2.get('seconds'), 1)} s"
            elif tr:
                s2_cell = f"TALLRec LoRA, {tr.get('steps')} steps, {_f(tr.get('seconds'), 1)} s"
            else:
                s2_cell = "-"
            body.append([u.get("variant", uid), u.get("restrict") or "all", cf_cell, s1_cell, s2_cell, f"{_f(u.get('seconds'), 1)} s", f"`{uid}`"])
        self.p("CF models and stage-1 runs are shared between variants with the same options (`shared/`); their times are those of the run that trained them.")
        self.p()
        self.table(["variant", "training users", "CF model", "stage 1", "stage 2 / LoRA", "unit wall time", "unit"], body)

    def not_run(self) -> None:
        rows = [(uid, self.units[uid]) for uid in self.plan if uid in self.units and self.units[uid].get("status") != "done"]
        missing = [uid for uid in self.plan if uid not in self.units]
        if not rows and not missing:
            return
        self.p("## Not run")
        self.p()
        for uid, u in rows:
            self.p(f"- `{uid}`: {u.get('status')}: {u.get('reason', '')}")
        for uid in missing:
            self.p(f"- `{uid}`: not reached yet")
        self.p()


_EFF_LABELS = {"TALLRec": "TALLRec", "allmrec-paper": "A-LLMRec (paper: LM loss)", "allmrec-best": f"A-LLMRec ({MODE_LABELS['best']})", "tallrec": "TALLRec", "llm-only": "LLM-Only (no training)"}


def _llm_path(check: dict[str, Any] | None) -> str:
    """A best-mode stage 2's LLM-path decision: kept or not, with the log-likelihood gain it was judged on."""
    if not check:
        return "-"
    verdict = "kept" if check.get("adopted") else "not kept"
    gain = check.get("loglik_gain")
    if not check.get("checked") or not gain:
        return f"{verdict} (unchecked)"
    return f"{verdict}: gain {gain['diff']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]"


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def _n(x: Any) -> str:
    return "-" if x is None else str(int(x))


def _ci(m: dict[str, Any]) -> str:
    ci = m.get("hit@1_ci95")
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else "-"
