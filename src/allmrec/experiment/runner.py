"""Run the paper's evaluation suite for one experiment config, resuming what is done.

The plan (:mod:`allmrec.experiment.plan`) names the variants and the tables' evaluation specs;
:mod:`allmrec.experiment.units` turns them into units of work (train a variant, evaluate one
method of one variant on one table's users, cross-domain, genres, efficiency), each recorded in
``units/<id>.json`` by :class:`allmrec.experiment.store.UnitStore`; a rerun skips finished
units whose inputs have not changed. ``results.json`` gathers the records of the current plan;
the report and the plots are built from it alone (:mod:`allmrec.experiment.report`,
:mod:`allmrec.experiment.plots`).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from allmrec.experiment.config import NEAREST_ONLY, ExperimentConfig
from allmrec.experiment.plan import Step, Unavailable, base_backbone, cross_domain_specs, define_variants, eval_specs
from allmrec.experiment.resources import SharedResources
from allmrec.experiment.scoring import UnitScorer
from allmrec.experiment.store import UnitStore, invocations, stable_hash
from allmrec.experiment.units import UnitBuilder
from allmrec.pipeline.config import RunConfig
from allmrec.utils.io import clear_temporary, read_json, write_json

FORMAT = "allmrec-experiment/1"


class ExperimentRunner:
    """Plan and run the units of one experiment; write ``results.json``, the report and plots.

    Parameters
    ----------
    config : a checked :class:`ExperimentConfig` (:func:`allmrec.experiment.config.load_experiment`).
    root : the experiment folder (default ``<config.out_dir>/<config.name>``).
    console : a ``rich`` console for progress lines (default: a new one).
    """

    def __init__(self, config: ExperimentConfig, root: str | Path | None = None, console: Any = None) -> None:
        from rich.console import Console

        self.cfg = config
        self.root = Path(root or Path(config.out_dir) / config.name).resolve()
        self.console = console or Console()
        self.store = UnitStore(self.root)
        self.variants = define_variants(config)
        self.shared = SharedResources(config, self.root, self.variants)
        self.scorer = UnitScorer(self.shared, self.store)
        self.units = UnitBuilder(self.shared, self.scorer)
        self._plan: list[str] = []
        self._past_runs: list[dict[str, Any]] = []  # earlier invocations on this folder (read by run())

    # ---- the plan ------------------------------------------------------------------------------------------
    def _needs(self) -> dict[str, set[str]]:
        """Per variant that trains: what its evaluations read (``cf`` and/or ``stage2``)."""
        needs: dict[str, set[str]] = {}
        for s in eval_specs(self.cfg) + cross_domain_specs(self.cfg, self.variants):
            if s.method == "cf":
                needs.setdefault(self.shared.actual(s.variant).name, set()).add("cf")
            elif s.method.startswith("allmrec"):
                needs.setdefault(self.shared.actual(s.variant).name, set()).add("stage2")
        extra = (["paper"] if self.cfg.genres.enabled else []) + (["main", "paper"] if self.cfg.efficiency.enabled else [])
        for name in extra:
            if name in self.variants:
                needs.setdefault(name, set()).add("stage2")
        return needs

    def steps(self) -> list[Step]:
        """Every unit of the plan, cheap and central ones first, TALLRec and timings last."""
        c, u = self.cfg, self.units
        specs, cross = eval_specs(c), cross_domain_specs(c, self.variants)
        self.shared.needs = needs = self._needs()
        cache: dict[str, Any] = {}
        steps: list[Step] = []
        for name, v in self.variants.items():
            if v.alias_of is None and name in needs:
                steps.append(u.train(name, needs[name]))
                steps += [u.evaluation(s) for s in specs if s.method != "tallrec" and self.shared.actual(s.variant).name == name]
        steps += [u.cross_domain(s, cache) for s in cross if s.method != "tallrec"]
        if c.genres.enabled:
            steps += [u.genres("llm-only"), u.genres("allmrec")]
        if c.baselines.enabled and c.baselines.tallrec:
            runs = [("tallrec", None)] + [(f"tallrec-few-shot-{k}", f"few_shot:{k}") for k in (c.scenarios.few_shot if c.scenarios.enabled else [])]
            for name, restrict in runs:
                steps.append(u.train_tallrec(name, restrict))
                steps += [u.evaluation(s) for s in specs if s.method == "tallrec" and s.variant == name]
                if name == "tallrec":
                    steps += [u.cross_domain(s, cache) for s in cross if s.method == "tallrec"]
        if c.efficiency.enabled:
            steps.append(u.efficiency())
        unique: dict[str, Step] = {}
        for st in steps:  # an alias's llm-only unit may come twice
            unique.setdefault(st.uid, st)
        return list(unique.values())

    def plan_summary(self) -> dict[str, Any]:
        """What the plan trains and scores, without running anything (for sizing a config):
        per training unit the CF epochs, stage-1 epochs and stage-2 / TALLRec steps; per evaluation
        unit the users asked for (before reuse between units)."""
        steps = self.steps()
        specs = {s.uid: s for s in eval_specs(self.cfg) + cross_domain_specs(self.cfg, self.variants)}
        rows = [self._summary_row(st, specs) for st in steps]
        llm_users = sum(r["users"] for r in rows if r.get("llm") and isinstance(r.get("users"), int))
        s2_steps = sum(r["stage2_steps"] for r in rows if isinstance(r.get("stage2_steps"), int))
        t_steps = sum(r["tallrec_steps"] for r in rows if isinstance(r.get("tallrec_steps"), int))
        return {"units": rows, "llm_user_evaluations_at_most": llm_users, "stage2_steps": s2_steps, "tallrec_steps": t_steps,
                "trainings": sum(1 for r in rows if r["unit"].startswith("train/"))}

    def _summary_row(self, st: Step, specs: dict[str, Any]) -> dict[str, Any]:
        rec = self.store.get(st.uid)
        row: dict[str, Any] = {"unit": st.uid, "done": bool(rec and rec.get("status") == "done")}
        if st.uid.startswith("train/"):
            name = st.uid.split("/", 1)[1]
            if name in self.variants:
                run, v = RunConfig(self.variants[name].config), self.variants[name]
                row["cf"] = f"{run.cf().backbone} <= {run.cf().epochs} epochs" + (f" on {v.restrict}" if v.restrict else "")
                if "stage2" in self.shared.needs.get(name, set()):
                    s2 = run.stage2()
                    if s2.model.item_table == "joint":
                        row["stage1"] = f"{run.stage1().epochs} epochs"
                    t = s2.train
                    row["stage2_steps"] = t.max_steps if t.max_steps is not None else f"{t.epochs} epochs x all users / {t.batch_size}"
            else:
                t = self.shared.tallrec_config()
                row["tallrec_steps"] = t.max_steps if t.max_steps is not None else f"{t.epochs} epochs / {t.batch_size}"
        elif st.uid in specs:
            s = specs[st.uid]
            row.update(method=s.method, users=s.n_users if s.n_users is not None else "all", llm=s.method != "cf")
        return row

    # ---- running ------------------------------------------------------------------------------------------
    def run(self, plots: bool = True) -> dict[str, Any]:
        """Run every unit of the plan (skipping finished ones); write results, report and plots."""
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.root / "units", self.root / "plots"):  # what a crashed run's writes left
            clear_temporary(folder, recursive=folder != self.root)
        write_json(self.root / "experiment.json", self.cfg.to_dict())
        steps = self.steps()
        self._plan = [s.uid for s in steps]
        previous = self.root / "results.json"
        self._past_runs = invocations(read_json(previous)) if previous.exists() else []
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        t0 = time.perf_counter()
        for i, step in enumerate(steps, 1):
            self._run_step(step, f"[{i}/{len(steps)}] {step.uid}")
            self.write_results(started, time.perf_counter() - t0, plots=False)
        return self.write_results(started, time.perf_counter() - t0, plots=plots)

    def _blocked(self, step: Step) -> str | None:
        for dep in step.needs:
            rec = self.store.get(dep)
            if not rec or rec.get("status") != "done":
                return f"needs {dep}, which is {rec.get('status') if rec else 'not run'}" + (f" ({rec.get('reason')})" if rec and rec.get("reason") else "")
        return None

    def _run_step(self, step: Step, prefix: str) -> dict[str, Any]:
        reason = self._blocked(step)
        if reason:
            self.console.print(f"{prefix}: [yellow]skipped[/yellow]: {reason}")
            return self.store.write(step.uid, {**step.info, "status": "skipped", "reason": reason})
        t0 = time.perf_counter()
        try:
            spec = step.spec()
            key = stable_hash(spec)
            if self.store.is_done(step.uid, key):
                self.console.print(f"{prefix}: done before, reused")
                return self.store.get(step.uid)
            self.console.print(f"{prefix}: running")
            result = step.run()
        except Unavailable as err:
            self.console.print(f"{prefix}: [yellow]unavailable[/yellow]: {err}")
            return self.store.write(step.uid, {**step.info, "status": "unavailable", "reason": str(err)})
        except Exception as err:  # noqa: BLE001 - recorded, then re-raised unless continue_on_error
            rec = self.store.write(step.uid, {**step.info, "status": "failed", "reason": f"{type(err).__name__}: {err}",
                                              "traceback": traceback.format_exc(limit=8)})
            self.console.print(f"{prefix}: [red]failed[/red]: {type(err).__name__}: {err}")
            if not self.cfg.continue_on_error:
                raise
            return rec
        seconds = time.perf_counter() - t0
        record = {**step.info, "status": "done", "key": key, "spec": spec, **result, "seconds": round(seconds, 2),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": _machine()}
        hit = (result.get("metrics") or {}).get("hit@1")
        self.console.print(f"{prefix}: done in {seconds:.1f} s" + (f", Hit@1 {hit:.4f} on {len(result['users'])} users" if hit is not None else ""))
        return self.store.write(step.uid, record)

    # ---- results ------------------------------------------------------------------------------------------
    def collect(self, started: str = "", elapsed: float = 0.0) -> dict[str, Any]:
        """``results.json``: the records of the current plan (per-user columns left in the unit files)."""
        plan = self._plan or [s.uid for s in self.steps()]
        units = {uid: _public(self.store.get(uid)) for uid in plan if self.store.get(uid)}
        loaded = self.shared._datasets
        dataset_name = getattr(next(iter(loaded.values())), "name", self.cfg.dataset_name) if loaded else self.cfg.dataset_name
        variants = {n: {"group": v.group, "alias_of": v.alias_of, "restrict": v.restrict, "identity": v.identity, "config": v.config}
                    for n, v in self.variants.items()}
        return {
            "format": FORMAT, "experiment": self.cfg.name, "dataset": dataset_name, "paper_dataset": self.cfg.resolved_paper_dataset(),
            "paper_nearest_only": self.cfg.dataset_name.lower() in NEAREST_ONLY, "base_backbone": base_backbone(self.cfg),
            "variant_mode": self.cfg.allmrec.variant_mode, "machine": _machine(), "started": started, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "this_run_seconds": round(elapsed, 1),
            # a resumed experiment's cost is the sum (unit records keep only their last run's time)
            "invocations": self._past_runs + ([{"started": started, "seconds": round(elapsed, 1)}] if started else []),
            "units_seconds": round(sum(float(u.get("seconds", 0.0)) for u in units.values() if u.get("status") == "done"), 1),
            "plan": plan, "config": self.cfg.to_dict(), "variants": variants, "units": units,
        }

    def write_results(self, started: str = "", elapsed: float = 0.0, plots: bool = True) -> dict[str, Any]:
        from allmrec.experiment.report import write_report

        results = self.collect(started, elapsed)
        write_json(self.root / "results.json", results)
        if plots:
            from allmrec.experiment.plots import write_plots

            results["plots"] = [self.units.rel(Path(p)) for p in write_plots(results, self.root / "plots")]
            write_json(self.root / "results.json", results)
        write_report(results, self.root / "report.md")
        return results


def _public(rec: dict[str, Any] | None) -> dict[str, Any]:
    rec = dict(rec or {})
    for key in ("users", "rank", "gen_hit", "gen_no_match", "traceback"):
        if key in rec and isinstance(rec[key], list):
            rec[f"n_{key}"] = len(rec.pop(key))
        elif key == "traceback":
            rec.pop(key, None)
    return rec


def _machine() -> str:
    from allmrec.eval.report import machine_description

    return machine_description()
