"""The pipeline behind the CLI: one run folder, one step per method, each reused or resumed.

    raw data -> prepared dataset (cache) -> CF model (run/cf) -> stage 1 (run/stage1)
             -> stage 2 (run/stage2) -> evaluation (run/results)

The configuration is one nested mapping with a section per step; ``PipelineConfig`` lists them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from allmrec.config import read_config_file
from allmrec.utils.io import atomic_path

log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    """What ``allmrec evaluate`` scores, and on which users."""

    split: str = "test"
    methods: list[str] = field(default_factory=lambda: ["cf", "llm-only", "allmrec"])
    mode: str = "rank"  # rank | generate | both (LLM methods only)
    max_users: int | None = None  # seeded sample of evaluated users; None = all
    scenarios: list[str] = field(default_factory=lambda: ["overall", "cold_items", "warm_items"])
    seed: int = 2024


@dataclass
class PipelineConfig:
    """Top-level sections. ``data``/``cf``/``stage1``/``llm``/``stage2`` take the options of
    PrepareConfig, TrainCFConfig, Stage1Config, LLMConfig and Stage2Config respectively."""

    dataset: str = "ml-100k"  # a preset name or a YAML file holding a data config
    data: dict[str, Any] = field(default_factory=dict)
    cf: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "default"
    stage1: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


SECTIONS = {f.name for f in dataclasses.fields(PipelineConfig)}


def demo_config_file() -> Path:
    return Path(str(resources.files("allmrec") / "configs" / "demo.yaml"))


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``["cf.epochs=20", "eval.methods=[cf,allmrec]"]`` -> ``{"cf.epochs": 20, ...}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in update.items():
        if "." in key:
            section, sub = key.split(".", 1)
            _check_section(section, where)
            if value is not None:
                base.setdefault(section, {})
                _merge(base[section], {sub: value}, where)
            continue
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, where)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _check_section(section: str, where: str) -> None:
    if section not in SECTIONS:
        raise ValueError(f"{where}: unknown section {section!r}; valid: {', '.join(sorted(SECTIONS))}")


class Pipeline:
    """A resolved configuration plus its run folder."""

    def __init__(self, config: dict[str, Any], run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self._dataset = None

    # ---- configuration --------------------------------------------------------------------
    @classmethod
    def from_sources(cls, run: Path | None = None, config_file: Path | None = None, sets: list[str] = (),
                     flags: dict[str, Any] | None = None) -> "Pipeline":
        """defaults < the run folder's saved config < ``config_file`` < flags < ``--set``."""
        cfg = dataclasses.asdict(PipelineConfig())
        layers: list[tuple[str, dict[str, Any]]] = []
        file_cfg = read_config_file(config_file) if config_file else {}
        run_key = file_cfg.pop("run", None)
        flags = dict(flags or {})
        run_dir = Path(run) if run else None
        if run_dir is None and run_key:
            run_dir = Path(run_key)
        if run_dir is not None and (run_dir / "config.yaml").exists():
            layers.append((str(run_dir / "config.yaml"), read_config_file(run_dir / "config.yaml")))
        if config_file:
            layers.append((str(config_file), file_cfg))
        layers.append(("command line", flags))
        layers.append(("--set", parse_sets(list(sets))))
        for where, layer in layers:
            for key in layer:
                _check_section(key.split(".", 1)[0], where)
            _merge(cfg, layer, where)
        if run_dir is None:
            run_dir = Path("runs") / Path(str(cfg["dataset"])).stem
        return cls(cfg, run_dir.resolve())

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name) or {})

    def save_config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.yaml"
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return path

    # ---- steps ------------------------------------------------------------------------------
    def data_config(self):
        from allmrec.config import from_dict
        from allmrec.data import PrepareConfig, load_preset

        name = str(self.config["dataset"])
        if name.endswith((".yaml", ".yml")):
            base = dataclasses.asdict(from_dict(PrepareConfig, read_config_file(name), where=name))
        else:
            base = dataclasses.asdict(load_preset(name))
        base.update(self.section("data"))
        return from_dict(PrepareConfig, base, where="data")

    def prepare(self, force: bool = False, show: bool = False):
        from allmrec.data import prepare

        if self._dataset is None or force:
            self._dataset = prepare(self.data_config(), force=force)
        if show:
            from allmrec.data import dataset_dir, print_stats

            print_stats(self._dataset)
            print(f"prepared dataset (statistics in meta.json): {dataset_dir(self.data_config())}")
        return self._dataset

    # ---- CF -----------------------------------------------------------------------------------
    @property
    def cf_dir(self) -> Path:
        return self.run_dir / "cf"

    def cf_config(self):
        from allmrec.config import from_dict
        from allmrec.cf import TrainCFConfig

        return from_dict(TrainCFConfig, self.section("cf"), where="cf")

    def train_cf(self, show: bool = False):
        from allmrec.cf import load_cf, train_cf

        ds = self.prepare()
        self.save_config()
        if (self.cf_dir / "model.safetensors").exists() and (self.cf_dir / "done.json").exists():
            self._check_cf_matches_config()
            log.info("CF model already trained in %s; reusing it", self.cf_dir)
            model = self.load_cf()
        else:
            model, _ = train_cf(ds, self.cf_config(), self.cf_dir, resume=True, progress=True)
            from allmrec.utils.io import write_json

            write_json(self.cf_dir / "done.json", {"finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if show:
            from allmrec.cf import evaluate_cf

            users = self.eval_users(ds, "valid")
            metrics = evaluate_cf(model, ds, "valid", users)
            print(f"{model.name} validation ({len(users)} users): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users"))
            print(f"model: {self.cf_dir / 'model.safetensors'}")
        return model

    def _check_cf_matches_config(self) -> None:
        """A finished CF run is reused only for the options it was trained with."""
        import json

        from allmrec.cf.trainer import RESUMABLE_FIELDS
        from allmrec.utils.io import read_json

        state_path = self.cf_dir / "trainer_state.json"
        if not state_path.exists():  # a model copied in from elsewhere (benchmarks --cf-from)
            return
        saved = read_json(state_path).get("config", {})
        current = json.loads(json.dumps(dataclasses.asdict(self.cf_config()), default=list))
        for key, value in current.items():
            if key not in RESUMABLE_FIELDS and saved.get(key) != value:
                raise ValueError(f"{self.cf_dir}: the CF model there was trained with cf.{key}={saved.get(key)!r}, "
                                 f"but cf.{key}={value!r} is asked for; use another --run folder")

    def load_cf(self):
        from allmrec.cf import load_cf

        if not (self.cf_dir / "model.safetensors").exists():
            raise FileNotFoundError(f"no trained CF model in {self.cf_dir}; run `allmrec train-cf --run {self.run_dir}` first")
        # Backbones built on item text (MoRec) recompute their frozen text table from the dataset.
        return load_cf(self.cf_dir, dataset=self.prepare() if self._needs_item_text() else None)

    def _needs_item_text(self) -> bool:
        from allmrec.cf import get_backbone_class

        return bool(getattr(get_backbone_class(self.cf_config().backbone), "needs_item_text", False))

    # ---- evaluation helpers ---------------------------------------------------------------------
    def eval_options(self) -> EvalOptions:
        from allmrec.config import from_dict

        return from_dict(EvalOptions, self.section("eval"), where="eval")

    def eval_users(self, ds, split: str, max_users: int | None = None) -> np.ndarray:
        """Users evaluated on ``split``: all users whose split is defined (cold users only on test),
        or a seeded sample of ``max_users`` of them (the same sample for every method)."""
        from allmrec.utils.seed import rng

        opts = self.eval_options()
        users = np.arange(ds.n_users) if split == "test" else np.flatnonzero(ds.train_users)
        users = users[[len(ds.sequences[u]) >= 3 for u in users]]
        limit = max_users if max_users is not None else opts.max_users
        if limit is not None and limit < len(users):
            users = np.sort(rng(opts.seed, "eval-users", split).choice(users, size=limit, replace=False))
        return users

    # ---- stage 1 ------------------------------------------------------------------------------
    @property
    def stage1_dir(self) -> Path:
        return self.run_dir / "stage1"

    def stage1_config(self):
        from allmrec.align import Stage1Config
        from allmrec.config import from_dict

        return from_dict(Stage1Config, self.section("stage1"), where="stage1")

    def align(self, show: bool = False):
        """Stage 1 (resumes an interrupted run; a finished one is reused as it is)."""
        from allmrec.align import train_stage1

        ds = self.prepare()
        cf = self._ensure_cf()
        self.save_config()
        result = train_stage1(ds, cf, str(self.config["text_encoder"]), self.stage1_config(), self.stage1_dir, resume=True, progress=True)
        if show and result.history:
            last = result.history[-1]
            print("stage 1 last epoch: " + ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "matching", "item_recon", "text_recon", "rec") if k in last))
            print(f"checkpoint: {result.checkpoint}")
        return result

    def joint_items(self, cf, use_text: str = "none"):
        """The ``(n_items + 1, d')`` joint embedding table fed to stage 2.

        ``use_text``: ``"none"`` (e_i for every item, the paper's default), ``"unknown"`` (q_i for
        items without training interactions: A-LLMRec (SBERT)) or ``"all"`` (q_i everywhere).
        """
        import torch

        from allmrec.align import item_text_embeddings, joint_item_table, load_stage1, untrained_item_mask

        ds = self.prepare()
        if not (self.stage1_dir / "latest.json").exists():
            raise FileNotFoundError(f"no stage-1 checkpoint in {self.stage1_dir}; run `allmrec align --run {self.run_dir}` first")
        model, encoder, _ = load_stage1(self.stage1_dir)
        if use_text == "none":
            mask = None
            text = None
        else:
            text = item_text_embeddings(encoder, ds)
            mask = untrained_item_mask(ds) if use_text == "unknown" else np.ones(ds.n_items + 1, dtype=bool)
            mask[0] = False
        with torch.no_grad():
            return joint_item_table(model, cf.item_embeddings().detach().float(), text, mask)

    def item_table(self, cf, use_text: str = "none"):
        """The table the stage-2 item soft tokens read, per ``stage2.item_table``: the joint
        embeddings (:meth:`joint_items`), the CF item embeddings (MLP-LLM), seeded random rows or
        zeros (ablations)."""
        import torch

        kind = self.stage2_config().item_table
        if kind == "joint":
            return self.joint_items(cf, use_text)
        table = cf.item_embeddings().detach().float().cpu()
        if kind == "cf":
            return table.clone()
        if kind == "zeros":
            return torch.zeros_like(table)
        gen = torch.Generator().manual_seed(int(self.stage2_config().seed))
        return torch.randn(table.shape, generator=gen) * table[1:].std()

    # ---- stage 2 ------------------------------------------------------------------------------
    @property
    def stage2_dir(self) -> Path:
        return self.run_dir / "stage2"

    def stage2_config(self):
        from allmrec.align import Stage2Config
        from allmrec.config import from_dict

        return from_dict(Stage2Config, self.section("stage2"), where="stage2")

    def load_llm(self):
        if getattr(self, "_llm", None) is None:
            from allmrec.config import from_dict
            from allmrec.llm import LLMConfig, load_llm

            self._llm = load_llm(from_dict(LLMConfig, self.section("llm"), where="llm"))
        return self._llm

    def _ensure_cf(self):
        """The trained CF model (trained first if missing; checked against the config if not)."""
        return self.train_cf()

    def train_stage2(self, show: bool = False):
        from allmrec.align import train_stage2

        ds = self.prepare()
        cf = self._ensure_cf()
        if self.stage2_config().item_table == "joint" and not (self.stage1_dir / "latest.json").exists():
            self.align()
        self.save_config()
        joint = self.item_table(cf)
        llm, tok = self.load_llm()
        model, info = train_stage2(ds, cf, joint, llm, tok, self.stage2_config(), self.stage2_dir, resume=True, progress=True)
        if show:
            print(f"stage 2: {info.get('step', '?')} steps; model: {self.stage2_dir / 'model.safetensors'}")
        return model

    # ---- evaluation -----------------------------------------------------------------------------
    def evaluate(self, show: bool = False) -> dict[str, Any]:
        """Score every method in ``eval.methods`` on the same users and stored candidates;
        report overall and per scenario; write ``results/<split>.json`` and ``.md``."""
        from allmrec.data import get_scenario
        from allmrec.eval.metrics import hit_interval, ranking_metrics
        from allmrec.eval.report import write_results

        opts = self.eval_options()
        ds = self.prepare()
        users = self.eval_users(ds, opts.split)
        scenarios = {}
        for name in opts.scenarios:
            sc = get_scenario(ds, name)
            scenarios[name] = np.isin(users, sc.eval_users)
        per_user: dict[str, dict[str, np.ndarray]] = {}
        results: dict[str, Any] = {"dataset": ds.name, "fingerprint": ds.fingerprint, "split": opts.split,
                                   "users": int(len(users)), "user_sample_seed": opts.seed if opts.max_users else None,
                                   "config": self.config, "methods": {}}
        for method in opts.methods:
            t0 = time.perf_counter()
            columns = self._score_method(method, ds, users, opts)
            seconds = time.perf_counter() - t0
            per_user[method] = columns
            entry: dict[str, Any] = {"seconds": round(seconds, 2), "seconds_per_user": round(seconds / max(len(users), 1), 4)}
            for name, mask in scenarios.items():
                row: dict[str, Any] = {}
                if "rank" in columns:
                    row.update(ranking_metrics(columns["rank"][mask]))
                    row["hit@1_ci95"] = list(hit_interval(columns["rank"][mask] == 0))
                if "gen_hit" in columns:
                    row["users"] = float(mask.sum())
                    row["gen_hit@1"] = float(columns["gen_hit"][mask].mean()) if mask.any() else None
                    row["gen_no_match"] = float(columns["gen_no_match"][mask].mean()) if mask.any() else None
                entry[name] = row
            results["methods"][method] = entry
            log.info("%s: %s", method, {k: v for k, v in entry.get("overall", {}).items() if k in ("hit@1", "gen_hit@1")})
        out_dir = self.run_dir / "results"
        labels = {m: self.method_label(m) for m in opts.methods}
        results["labels"] = labels
        rows = {f"{labels[m]} / {s}": results["methods"][m][s] for m in opts.methods for s in scenarios}
        columns = ["hit@1", "hit@5", "hit@10", "ndcg@10", "mrr", "gen_hit@1", "gen_no_match", "users"]
        json_path, md_path = write_results(out_dir, opts.split, results, rows, columns,
                                           title=f"{ds.name}: {opts.split} users, 1 + {ds.test_candidates.shape[1] - 1} stored candidates")
        if show:
            print(md_path.read_text())
            print(f"results: {json_path} and {md_path}")
        return results

    def method_label(self, method: str) -> str:
        """How tables name ``method``: A-LLMRec rows say which stage-2 mode made them."""
        from allmrec.eval.report import BACKBONE_LABELS, allmrec_label

        if method in ("allmrec", "allmrec-sbert"):
            cfg = self.stage2_config()
            mode = "best" if cfg.objective == "listwise" and cfg.residual else ("listwise" if cfg.objective == "listwise" else "paper")
            return allmrec_label(mode, sbert=method == "allmrec-sbert")
        if method == "cf":
            name = self.cf_config().backbone
            return BACKBONE_LABELS.get(name, name)
        return {"llm-only": "LLM-Only"}.get(method, method)

    def score_method(self, method: str, ds, users: np.ndarray, opts: EvalOptions | None = None) -> dict[str, np.ndarray]:
        """Per-user columns of ``method`` on ``users`` (what ``allmrec evaluate`` reports)."""
        return self._score_method(method, ds, users, opts or self.eval_options())

    def _score_method(self, method: str, ds, users: np.ndarray, opts: EvalOptions) -> dict[str, np.ndarray]:
        """Per-user columns for ``method``: ``rank`` (0-based rank of the truth) and, in
        generation mode, ``gen_hit`` / ``gen_no_match``."""
        from allmrec.eval.metrics import target_ranks

        if method == "cf":
            from allmrec.cf import score_candidates

            return {"rank": target_ranks(score_candidates(self.load_cf(), ds, opts.split, users))}
        if method not in ("llm-only", "allmrec", "allmrec-sbert"):
            raise ValueError(f"eval.methods: unknown method {method!r}; known: cf, llm-only, allmrec, allmrec-sbert")
        from allmrec.align import load_stage2
        from allmrec.llm import PromptConfig
        from allmrec.recommend import InferenceConfig, evaluate_llm

        llm, tok = self.load_llm()
        s2cfg = self.stage2_config()
        kwargs: dict[str, Any] = {}
        if method == "llm-only":
            kwargs["prompt"] = PromptConfig(style="text", history_len=s2cfg.history_len, max_title_tokens=s2cfg.max_title_tokens)
        else:
            cf = self.load_cf()
            if not (self.stage2_dir / "model.json").exists():
                raise FileNotFoundError(f"no stage-2 model in {self.stage2_dir}; run `allmrec train --run {self.run_dir}` first")
            stage2 = load_stage2(self.stage2_dir, llm=llm, cf_model=cf)
            kwargs.update(stage2=stage2, cf_model=cf, joint_items=self.item_table(cf, "unknown" if method == "allmrec-sbert" else "none"))
        modes = ["rank", "generate"] if opts.mode == "both" else [opts.mode]
        if "stage2" in kwargs and kwargs["stage2"].objective == "listwise" and "generate" in modes:
            log.info("%s: the listwise stage-2 model ranks but does not generate; generation skipped", method)
            modes = [m for m in modes if m != "generate"] or ["rank"]
        out: dict[str, np.ndarray] = {}
        for mode in modes:
            cfg = InferenceConfig(mode=mode, seed=opts.seed, progress=True)
            metrics, rows = evaluate_llm(ds, llm, tok, opts.split, users, config=cfg, **kwargs)
            if mode == "rank":
                out["rank"] = np.array([r["rank"] for r in rows], dtype=np.int64)
            else:
                out["gen_hit"] = np.array([r["gen_hit"] for r in rows], dtype=bool)
                out["gen_no_match"] = np.array([r["matched"] is None for r in rows], dtype=bool)
                self._write_outputs(method, rows)
        return out

    def _write_outputs(self, method: str, rows: list[dict[str, Any]]) -> None:
        import json

        path = self.run_dir / "results" / f"generations-{method}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps({k: r[k] for k in ("user", "target", "generated", "answer", "matched", "gen_hit")}) + "\n" for r in rows))

    # ---- recommend ------------------------------------------------------------------------------
    def recommend(self, history: list[str], candidates: list[str] | None, top: int = 10, show: bool = False):
        """Rank ``candidates`` (original item ids; default: 19 seeded random unseen items) for a
        history of original item ids with the trained A-LLMRec model."""
        from allmrec.align import load_stage2
        from allmrec.recommend import Recommender
        from allmrec.utils.seed import rng

        ds = self.prepare()
        index = {str(iid): i for i, iid in enumerate(ds.item_ids) if i > 0}
        unknown = [h for h in history + (candidates or []) if h not in index]
        if unknown:
            raise KeyError(f"unknown item id(s) for dataset {ds.name}: {', '.join(unknown[:5])}")
        hist = [index[h] for h in history]
        if candidates:
            cands = [index[c] for c in candidates]
        else:
            pool = np.setdiff1d(np.arange(1, ds.n_items + 1), hist)
            cands = rng(0, "recommend").choice(pool, size=min(19, len(pool)), replace=False).tolist()
        cf = self.load_cf()
        llm, tok = self.load_llm()
        stage2 = load_stage2(self.stage2_dir, llm=llm, cf_model=cf)
        rec = Recommender.from_dataset(ds, llm, tok, stage2=stage2, cf_model=cf, joint_items=self.item_table(cf))
        ranked = rec.recommend(hist, cands)[:top]
        if show:
            for pos, (item, score) in enumerate(ranked, 1):
                print(f"{pos:2d}. {ds.item_ids[item]}  {ds.titles[item]}  (score {score:.2f})")
        return ranked

    # ---- demo -----------------------------------------------------------------------------------
    def demo(self) -> dict[str, Any]:
        """Every step on the configured dataset, then the comparison table."""
        from rich.console import Console

        console = Console()
        t0 = time.perf_counter()
        steps = [("prepare", lambda: self.prepare(show=True)), ("CF model", lambda: self.train_cf(show=True)),
                 ("stage 1", lambda: self.align(show=True)), ("stage 2", lambda: self.train_stage2(show=True)),
                 ("evaluate", lambda: self.evaluate(show=True))]
        timings = {}
        for name, fn in steps:
            console.rule(f"[bold]{name}")
            s = time.perf_counter()
            out = fn()
            timings[name] = round(time.perf_counter() - s, 1)
        total = time.perf_counter() - t0
        console.rule("[bold]summary")
        for m, entry in out["methods"].items():
            ov = entry["overall"]
            extra = f", generation exact match {ov['gen_hit@1']:.3f}" if "gen_hit@1" in ov else ""
            hit = f"Hit@1 {ov['hit@1']:.3f} [{ov['hit@1_ci95'][0]:.3f}, {ov['hit@1_ci95'][1]:.3f}]" if "hit@1" in ov else ""
            console.print(f"{out['labels'].get(m, m):>42}: {hit}{extra}")
        console.print(f"{int(out['users'])} test users, same candidates for every method. Step times (s): {timings}; total {total / 60:.1f} min")
        return out
