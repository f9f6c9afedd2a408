"""The units of an experiment as :class:`~allmrec.experiment.plan.Step` objects: train a
variant, train TALLRec, evaluate one method on one table's users, cross-domain, genres,
efficiency. Each has a ``spec`` (the inputs that define its result; hashed into the unit's key)
and a ``run`` that returns the fields of its record."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from allmrec.experiment.efficiency import efficiency
from allmrec.experiment.plan import EvalSpec, Step, Unavailable, shared_names
from allmrec.experiment.resources import SharedResources, link
from allmrec.experiment.scoring import UnitScorer
from allmrec.experiment.store import file_hash, stable_hash
from allmrec.methods.allmrec import allmrec_label


def _stage2_summary(folder) -> dict[str, Any]:
    from allmrec.utils.io import read_json

    path = folder / "model.json"
    if not path.exists():
        return {}
    meta = read_json(path)
    state = meta.get("trainer_state") or {}
    cfg = meta.get("stage2") or {}
    model, train = cfg.get("model", {}), cfg.get("train", {})
    steps, seconds = int(state.get("step", 0)), float(state.get("seconds", 0.0))
    return {"mode": cfg.get("mode"), "objective": model.get("objective"), "residual": model.get("residual"), "train_target": train.get("train_target"),
            "item_table": model.get("item_table"), "batch_size": train.get("batch_size"), "steps": steps, "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / steps, 4) if steps else None, "curve": state.get("curve", []), "loss_log": state.get("loss_log", []),
            "llm_path": meta.get("llm_path")}


class UnitBuilder:
    def __init__(self, shared: SharedResources, scorer: UnitScorer) -> None:
        self.shared, self.scorer, self.cfg = shared, scorer, shared.cfg
        self.root = shared.root

    def rel(self, path) -> str:
        try:
            return str(path.resolve().relative_to(self.root))
        except ValueError:
            return str(path)

    # ---- training --------------------------------------------------------------------------------------
    def train(self, name: str, needs: set[str]) -> Step:
        v = self.shared.variants[name]
        spec = lambda: {"kind": "train", "variant": name, "config": v.config, "restrict": v.restrict, "needs": sorted(needs)}  # noqa: E731
        return Step(f"train/{name}", spec, lambda: self._train(name, needs), info={"kind": "train", "variant": name, "group": v.group})

    def _train(self, name: str, needs: set[str]) -> dict[str, Any]:
        from allmrec.align.stage1 import stage1_summary
        from allmrec.cf.registry import get_backbone_class
        from allmrec.cf.training import training_summary
        from allmrec.pipeline import steps

        res = self.shared.run(name)
        try:
            get_backbone_class(res.config.cf().backbone)
        except KeyError as err:
            raise Unavailable(f"CF backbone {res.config.cf().backbone!r} is not registered ({err.args[0]})") from None
        out: dict[str, Any] = {"variant": name, "run_dir": self.rel(res.folder.root), "restrict": self.shared.variants[name].restrict}
        t0 = time.perf_counter()
        steps.train_cf(res)
        out["cf"] = {"dir": self.rel(res.folder.cf.resolve()), "wall_seconds": round(time.perf_counter() - t0, 2), **training_summary(res.folder.cf)}
        stamp = {"cf": file_hash(res.folder.cf / "model.safetensors")}
        if "stage2" in needs:
            if res.config.stage2().model.item_table == "joint":
                link(res.folder.stage1, self.root / "shared" / shared_names(self.shared.variants[name])[1])
                t0 = time.perf_counter()
                steps.align(res)
                out["stage1"] = {"dir": self.rel(res.folder.stage1.resolve()), "wall_seconds": round(time.perf_counter() - t0, 2), **stage1_summary(res.folder.stage1)}
                stamp["stage1"] = file_hash(res.folder.stage1 / "model.safetensors")
            t0 = time.perf_counter()
            steps.train_stage2(res)
            out["stage2"] = {"dir": self.rel(res.folder.stage2), "wall_seconds": round(time.perf_counter() - t0, 2), **_stage2_summary(res.folder.stage2)}
            stamp["stage2"] = file_hash(res.folder.stage2 / "model.safetensors")
        out["stamp"] = stamp
        return out

    def train_tallrec(self, name: str, restrict: str | None) -> Step:
        def spec() -> dict[str, Any]:
            main = self.shared.main
            return {"kind": "train-tallrec", "config": dataclasses.asdict(self.shared.tallrec_config()), "data": dataclasses.asdict(main.config.data()),
                    "restrict": restrict, "llm": main.config.section("llm")}

        def run() -> dict[str, Any]:
            from allmrec.baselines.tallrec import train_tallrec

            config, main = self.shared.tallrec_config(), self.shared.main
            ds = self.shared.dataset(main.config.data(), restrict)
            llm, tok = main.llm
            self.shared.drop_tallrec()
            model, state = train_tallrec(ds, llm, tok, config, self.root / name, resume=True, progress=True)
            self.shared.tallrec_model(name, model)
            return {"variant": name, "run_dir": name, "restrict": restrict,
                    "tallrec": {"config": dataclasses.asdict(config), "steps": int(state.get("step", 0)), "seconds": float(state.get("seconds", 0.0)),
                                "seconds_per_step": float(state.get("step_seconds") or 0.0), "loss_log": state.get("loss_log", [])},
                    "stamp": {"tallrec": file_hash(self.root / name / "model.safetensors")}}

        return Step(f"train/{name}", spec, run, info={"kind": "train", "variant": name, "group": "tallrec"})

    # ---- evaluation -------------------------------------------------------------------------------------
    def info(self, s: EvalSpec) -> dict[str, Any]:
        v = self.shared.variants.get(s.variant)
        return {"kind": "eval", "table": s.table, "variant": s.variant, "actual_variant": self.shared.actual(s.variant).name if v else s.variant,
                "alias_of": v.alias_of if v else None, "method": s.method, "row": s.row, "label": s.label, "sample": s.sample}

    def evaluation(self, s: EvalSpec) -> Step:
        sc = self.scorer
        users = lambda: self.shared.sample_users(self.shared.main.dataset, s.sample, s.n_users)  # noqa: E731

        def spec() -> dict[str, Any]:
            u = users()
            return {"kind": "eval", "table": s.table, "variant": s.variant, "method": s.method, "sample": s.sample, "n_users": len(u),
                    "users": stable_hash(u.tolist()), "mode": sc.mode(s), "split": self.cfg.eval.split, "score_key": sc.score_key(s)}

        uid = sc.train_uid(s)
        return Step(s.uid, spec, lambda: sc.evaluate(s, users(), sc.score_key(s), lambda missing: sc.score(s, missing)), needs=[uid] if uid else [],
                    info=self.info(s))

    def cross_domain(self, s: EvalSpec, cache: dict[str, Any]) -> Step:
        from allmrec.eval.evaluate import evaluate_users
        from allmrec.experiment.cross_domain import cross_recommender

        sc, cd = self.scorer, self.cfg.scenarios.cross_domain
        users = lambda: self.shared.sample_users(self.shared.target_dataset(), "cross_domain", s.n_users)  # noqa: E731

        def spec() -> dict[str, Any]:
            u = users()
            return {"kind": "cross_domain", "target": {"dataset": cd.dataset, "data": cd.data}, "variant": s.variant, "method": s.method,
                    "n_users": len(u), "users": stable_hash(u.tolist()), "mode": sc.mode(s), "score_key": sc.score_key(s, "cross")}

        def score(missing: np.ndarray) -> dict[str, np.ndarray]:
            ds, split, seed = self.shared.target_dataset(), self.cfg.eval.split, self.cfg.eval.seed
            if s.method == "tallrec":
                return sc.score_tallrec(s.variant, ds, missing)
            rec = cross_recommender(s.method, self.shared.run(s.variant), ds, missing, split, seed, cache)
            return evaluate_users(rec, ds, split, missing, sc.mode(s))

        def run() -> dict[str, Any]:
            out = sc.evaluate(s, users(), sc.score_key(s, "cross"), score)
            return {**out, "source": self.shared.main.dataset.name, "target": self.shared.target_dataset().name}

        uid = sc.train_uid(s)
        return Step(s.uid, spec, run, needs=[uid] if uid else [], info={**self.info(s), "kind": "cross_domain"})

    # ---- favourite genres and efficiency ------------------------------------------------------------------
    def genre_config(self):
        from allmrec.config import from_dict
        from allmrec.experiment.genres import GenreConfig

        model = self.shared.main.config.stage2().model
        return from_dict(GenreConfig, {"history_len": model.history_len, "max_title_tokens": model.max_title_tokens, **self.cfg.genres.options},
                         where="genres.options")

    def genres(self, method: str) -> Step:
        variant = "paper" if method == "allmrec" else "main"
        users = lambda: self.shared.sample_users(self.shared.main.dataset, "overall", self.cfg.genres.users)  # noqa: E731

        def spec() -> dict[str, Any]:
            stamp = (self.scorer.store.get("train/paper") or {}).get("stamp") if method == "allmrec" else self.shared.main.config.section("llm")
            return {"kind": "genres", "method": method, "config": dataclasses.asdict(self.genre_config()), "users": stable_hash(users().tolist()), "stamp": stamp}

        label = allmrec_label("paper") if method == "allmrec" else "LLM-Only"
        needs = ["train/paper"] if method == "allmrec" and "paper" in self.shared.variants else []
        return Step(f"genres/{method}", spec, lambda: self._genres(method, users()), needs=needs,
                    info={"kind": "genres", "method": method, "label": label, "variant": variant})

    def _genres(self, method: str, users: np.ndarray) -> dict[str, Any]:
        from allmrec.experiment.genres import favourite_genres

        cfg, ds = self.genre_config(), self.shared.main.dataset
        if cfg.field not in ds.item_fields:
            raise Unavailable(f"dataset {ds.name} has no item field {cfg.field!r} (fields: {', '.join(sorted(ds.item_fields)) or 'none'})")
        if method == "allmrec" and "paper" not in self.shared.variants:
            raise Unavailable("favourite genres need a generating A-LLMRec: enable allmrec.paper_mode (the best mode does not generate)")
        llm, tok = self.shared.main.llm
        kwargs: dict[str, Any] = {}
        if method == "allmrec":
            res = self.shared.run("paper")
            kwargs = {"stage2": res.stage2, "cf_model": res.cf, "joint_items": res.trained_item_table()}
        t0 = time.perf_counter()
        result = favourite_genres(ds, llm, tok, users, config=cfg, **kwargs)
        seconds = time.perf_counter() - t0
        return {"genres": _jsonable(result), "users": [int(x) for x in users], "seconds_per_user": round(seconds / max(len(users), 1), 4)}

    def efficiency(self) -> Step:
        e = self.cfg.efficiency
        names = [n for n in ("paper", "main") if n in self.shared.variants]
        users = lambda: self.shared.sample_users(self.shared.main.dataset, "overall", e.users)  # noqa: E731

        def spec() -> dict[str, Any]:
            tallrec = dataclasses.asdict(self.shared.tallrec_config()) if self.cfg.baselines.enabled and self.cfg.baselines.tallrec else None
            stamps = {n: (self.scorer.store.get(f"train/{n}") or {}).get("stamp") for n in names}
            return {"kind": "efficiency", "sizes": dataclasses.asdict(e), "users": stable_hash(users().tolist()), "stamps": stamps, "tallrec": tallrec}

        return Step("efficiency", spec, lambda: efficiency(self.shared, users(), names), needs=[f"train/{n}" for n in names], info={"kind": "efficiency"})


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else (o.tolist() if hasattr(o, "tolist") else str(o))))

