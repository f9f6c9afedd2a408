"""The fusion (no LLM): candidate features on hand-made tables, the net starting at the CF
ranking, a fit that finds an informative expert, the popularity operating point, saving, and the
users it is fitted on."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from allmrec.data.queries import Queries
from allmrec.eval.metrics import paired_bootstrap, target_ranks
from allmrec.fusion import Design, FeatureSources, FusedScorer, Fusion, FusionConfig, control_config, fit_fusion, similarity_features
from allmrec.fusion.features import cf_confidence, zscore
from allmrec.fusion.tower import TowerConfig, train_text_tower
from allmrec.fusion.training import allround_hit, fitting_users
from helpers import tiny_dataset


def test_similarities_on_a_hand_made_table():
    table = np.zeros((5, 2), np.float32)
    table[1], table[2], table[3], table[4] = [1, 0], [0, 1], [1, 1], [-1, 0]
    t = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-9)
    f = similarity_features(t, [np.array([2, 1])], np.array([[1, 2, 4]]), "x")
    np.testing.assert_allclose(f["x_last"][0], [1, 0, -1], atol=1e-6)  # last item is 1
    np.testing.assert_allclose(f["x_max"][0], [1, 1, 0], atol=1e-6)  # best of items 2 and 1
    # decayed mean: 0.8 * e2 + 1.0 * e1 (normalised); the mean of the whole history: e1 + e2
    u = np.array([1.0, 0.8]) / np.linalg.norm([1.0, 0.8])
    np.testing.assert_allclose(f["x_dmean"][0], [u[0], u[1], -u[0]], atol=1e-6)
    np.testing.assert_allclose(f["x_mean"][0], [2**-0.5, 2**-0.5, -(2**-0.5)], atol=1e-6)


def test_cf_confidence_reads_the_margin_and_entropy():
    sure, unsure = cf_confidence(np.array([[10.0, 0, 0, 0]])), cf_confidence(np.array([[1.0, 1, 1, 1]]))
    assert sure["u_margin"][0] > 1 and unsure["u_margin"][0] == pytest.approx(0)
    assert unsure["u_ent"][0] == pytest.approx(np.log(4), abs=1e-5) and sure["u_ent"][0] < 0.01


@pytest.mark.parametrize("kind", ["linear", "gated", "mlp"])
def test_an_unfitted_net_ranks_as_the_cf_model(kind):
    gen = np.random.default_rng(0)
    feats = {"cf": gen.normal(size=(6, 5)), "other": gen.normal(size=(6, 5)), "logpop": gen.normal(size=(6, 5)), "u_len": gen.normal(size=6)}
    design = Design(["cf", "other"], ["logpop", "u_len"] if kind != "linear" else [], ["other"] if kind == "mlp" else []).fit_stats(feats)
    Z, G = design.inputs(feats)
    net = Fusion(2, G.shape[-1], len(design.gates), kind)
    np.testing.assert_allclose(net(Z, G).detach().numpy(), zscore(feats["cf"]), atol=1e-5)


class Oracle:
    """An expert that knows the validation / test truth (column 0) up to noise."""

    def __init__(self, noise: float, seed: int = 0) -> None:
        self.noise, self.seed = noise, seed

    def score(self, queries: Queries) -> np.ndarray:
        gen = np.random.default_rng([self.seed, len(queries)])
        s = gen.normal(scale=self.noise, size=queries.candidates.shape)
        s[:, 0] += 1.0
        return s


class Noise(Oracle):
    def score(self, queries: Queries) -> np.ndarray:
        return np.random.default_rng([self.seed, len(queries), 7]).normal(size=queries.candidates.shape)


@pytest.fixture(scope="module")
def fitted():
    ds = tiny_dataset(n_users=240, n_items=60, seq_len=6)
    sources = FeatureSources({"cf": Noise(0), "tower": Oracle(0.7)}, {}, ds.train_item_counts())
    config = FusionConfig(kind="gated", tables=[], seeds=2, max_epochs=30, patience=4, batch_size=32, betas=[0.0, 0.2])
    excluded = np.arange(0, 240, 4)
    return ds, sources, config, excluded, fit_fusion(ds, sources, config, excluded)


def test_fit_learns_to_trust_the_informative_expert(fitted):
    ds, sources, config, _, scorer = fitted
    queries = Queries.from_split(ds, "test", np.arange(ds.n_users))
    hit = lambda s: (target_ranks(s) == 0).mean()  # noqa: E731
    fused, oracle, cf = hit(scorer.score(queries)), hit(sources.experts["tower"].score(queries)), hit(sources.experts["cf"].score(queries))
    assert fused >= 0.8 * oracle and oracle > 0.25 and cf < 0.12  # test rows: one history item more than the fitted ones
    assert len(scorer.nets) == 2 and scorer.beta in (0.0, 0.2)
    assert set(scorer.meta["beta_criterion"]) == {"0.0", "0.2"} and all(f["epochs"] >= 1 for f in scorer.meta["fits"])
    assert all(float(net.w[1]) > float(net.w[0]) for net in scorer.nets)


def test_fitting_users_leave_out_the_excluded_and_hold_out_the_early_stopping_users(fitted):
    ds, _, config, excluded, scorer = fitted
    fit, es = fitting_users(ds, excluded, config)
    assert not (set(fit) | set(es)) & set(excluded.tolist()) and not set(fit) & set(es)
    assert len(fit) + len(es) == ds.n_users - len(excluded) and len(es) == round(0.1 * (len(fit) + len(es)))
    assert scorer.meta["fit_users"] == len(fit) and scorer.meta["es_users"] == len(es)


def test_a_saved_fusion_scores_the_same(fitted, tmp_path):
    ds, sources, _, _, scorer = fitted
    scorer.save(tmp_path)
    meta, tensors = FusedScorer.read(tmp_path)
    again = FusedScorer.from_saved(meta, tensors, sources)
    queries = Queries.from_split(ds, "test", np.arange(20))
    np.testing.assert_array_equal(again.score(queries), scorer.score(queries))
    assert again.identity() == scorer.identity() and again.beta == scorer.beta
    with pytest.raises(FileNotFoundError, match="allmrec fuse"):
        FusedScorer.read(tmp_path / "nothing")


def test_the_popularity_offset_moves_rankings_toward_unpopular_items():
    ds = tiny_dataset(n_users=30, n_items=40)
    sources = FeatureSources({"cf": Noise(0)}, {}, ds.train_item_counts())
    scorer = FusedScorer(sources, Design(["cf"]), [Fusion(1, 0, 0, "linear")], beta=5.0)
    queries = Queries.from_split(ds, "test", np.arange(30))
    top = scorer.rank(queries)[:, 0]
    counts = ds.train_item_counts()[queries.candidates]
    assert (counts[np.arange(30), top] == counts.min(1)).mean() > 0.9


def test_allround_hit_is_the_mean_of_overall_cold_and_warm():
    scores = np.array([[2.0, 1], [0, 1], [2, 1], [2, 1]])  # hits: 1, 0, 1, 1
    targets = np.array([5, 6, 7, 8])
    assert allround_hit(scores, targets, cold=np.array([6]), warm=np.array([7, 8])) == pytest.approx((0.75 + 0 + 1) / 3)
    assert allround_hit(scores, targets, cold=np.array([99]), warm=np.array([7])) == pytest.approx(0.75 * 2 / 3 + 1 / 3)


def test_paired_bootstrap_on_hand_made_cases():
    same = paired_bootstrap(np.ones(50), np.ones(50))
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "users": 50}
    better = paired_bootstrap(np.r_[np.ones(40), np.zeros(10)], np.zeros(50))
    assert better["diff"] == pytest.approx(0.8) and 0.65 < better["low"] < 0.8 < better["high"] < 0.95
    with pytest.raises(ValueError):
        paired_bootstrap(np.ones(3), np.ones(4))


def test_configs_are_checked_and_the_control_is_linear_on_cf_and_text():
    with pytest.raises(ValueError, match="start with 'cf'"):
        FusionConfig(experts=["tower", "cf"])
    with pytest.raises(ValueError, match="unknown"):
        FusionConfig(tables=["llm"])
    control = control_config()
    design = control.design()
    assert control.kind == "linear" and design.experts == ["cf", "text_dmean", "text_last"] and not design.gates and control.betas == [0.0]
    assert FusionConfig().design().extras[-1] == "tower"


def test_text_tower_learns_a_sequential_text_pattern():
    """Items come in groups whose texts share a direction; users walk within a group: the tower
    ranks the next item (same group) above other groups' items."""
    ds = tiny_dataset(n_users=80, n_items=40, seq_len=6)
    gen = np.random.default_rng(1)
    groups = (np.arange(ds.n_items + 1) % 4)
    table = np.eye(4)[groups] * 3 + gen.normal(scale=0.3, size=(ds.n_items + 1, 4))
    for u in range(ds.n_users):  # re-draw sequences inside one group
        g = u % 4
        pool = np.flatnonzero(groups[1:] == g) + 1
        ds.sequences[u] = gen.permutation(pool)[:6]
    torch.manual_seed(0)
    tower, info = train_text_tower(ds, table, TowerConfig(dim=8, hidden=16, epochs=6, batch_size=32, negatives=16, lr=1e-2), cache=False)
    hist = [ds.sequences[u][:3] for u in range(8)]
    same = [ds.sequences[u][3] for u in range(8)]
    other = [int(np.flatnonzero(groups[1:] == (u + 1) % 4)[0] + 1) for u in range(8)]
    s = tower.score(Queries(np.arange(8), hist, np.stack([same, other], 1), [str(u) for u in range(8)]))
    assert (s[:, 0] > s[:, 1]).all() and info["best"] is not None

    # new items: a copy of item 1's text row scores as item 1 does, known items' scores stay
    extra = table[1:2] + 0.0
    before = tower.score(Queries(np.arange(8), hist, np.stack([same, other], 1), [str(u) for u in range(8)]))
    tower.add_items(extra)
    new_id = ds.n_items + 1
    s = tower.score(Queries(np.arange(8), hist, np.stack([same, other, np.ones(8, int), np.full(8, new_id)], 1), [str(u) for u in range(8)]))
    np.testing.assert_allclose(s[:, :2], before, atol=1e-6)
    np.testing.assert_allclose(s[:, 2], s[:, 3], atol=1e-6)


def test_text_tower_is_trained_once_per_dataset_table_and_options(tmp_path, monkeypatch):
    import allmrec.fusion.tower as tower_module

    ds = tiny_dataset(n_users=40, n_items=40, seq_len=5)
    table = np.random.default_rng(2).normal(size=(ds.n_items + 1, 4))
    config = TowerConfig(dim=4, hidden=8, epochs=2, batch_size=16, negatives=8)
    first, info = train_text_tower(ds, table, config, cache_dir=tmp_path)
    trained = tower_module.run_training
    monkeypatch.setattr(tower_module, "run_training", lambda *a, **k: pytest.fail("trained again instead of loading"))
    again, info_again = train_text_tower(ds, table, config, cache_dir=tmp_path)
    assert info_again == json.loads(json.dumps(info)) and not again.training
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    monkeypatch.setattr(tower_module, "run_training", trained)
    train_text_tower(ds, table, TowerConfig(**{**vars(config), "seed": 1}), cache_dir=tmp_path)  # other options
    train_text_tower(ds, table + 1.0, config, cache_dir=tmp_path)  # another table
    fewer = dataclasses.replace(ds, train_users=ds.train_users & (np.arange(ds.n_users) % 2 == 0))  # a scenario's users
    train_text_tower(fewer, table, config, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_a_grown_fusion_scores_new_items_and_leaves_known_ones(fitted):
    """New items get every table's rows and zero popularity; known items' scores do not move."""
    ds, _, config, excluded, _ = fitted
    gen = np.random.default_rng(3)
    table = gen.normal(size=(ds.n_items + 1, 4))
    sources = FeatureSources({"cf": Noise(0)}, {"text": table}, ds.train_item_counts())
    scorer = FusedScorer(sources, Design(["cf", "text_dmean"]), [Fusion(2, 0, 0, "linear")])
    q = Queries(np.arange(5), [ds.sequences[u][:3] for u in range(5)], np.tile(np.arange(1, 7), (5, 1)), [str(u) for u in range(5)])
    before = scorer.score(q)
    with pytest.raises(ValueError, match="every table"):
        scorer.add_items({}, {"other": table[:1]})
    scorer.add_items({}, {"text": table[1:3]})
    assert scorer.n_items == ds.n_items + 2 and scorer.sources.item_counts[-2:].tolist() == [0, 0]
    np.testing.assert_allclose(scorer.score(q), before, atol=1e-6)
    grown = Queries(q.users, q.histories, np.concatenate([q.candidates, np.full((5, 1), ds.n_items + 1)], 1), q.keys)
    assert scorer.score(grown).shape == (5, 7)
