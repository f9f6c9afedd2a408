"""Stage 1 (paper eq. 2-6) on a tiny synthetic dataset, a tiny CF model and the real MiniLM."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from allmrec.align import Stage1Config, Stage1Model, joint_item_table, load_stage1, train_stage1, untrained_item_mask
from allmrec.align.stage1.training import _build_examples, _NegativeSampler
from allmrec.cf.base import CFBackbone, CFConfig
from allmrec.data.dataset import SequenceDataset
from allmrec.text import TextEncoder, load_text_encoder
from allmrec.training import latest_checkpoint
from allmrec.utils.fingerprint import cf_identity, state_fingerprint
from allmrec.utils.io import load_tensors

pytestmark = pytest.mark.slow

N_ITEMS, N_USERS, D_CF = 30, 40, 16
ADJ = ["red", "matte", "gentle", "vanilla", "fresh", "silky"]
NOUN = ["lipstick", "shampoo", "perfume", "nail polish", "face cream"]


class TinyCF(CFBackbone):
    """Mean of the history's item embeddings through a linear layer."""

    def __init__(self, config: CFConfig) -> None:
        super().__init__(config)
        self.items = nn.Embedding(config.n_items + 1, config.dim, padding_idx=0)
        self.proj = nn.Linear(config.dim, config.dim)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight

    def user_representation(self, users: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        mask = (histories > 0).float().unsqueeze(-1)
        mean = (self.items(histories) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.proj(mean)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:  # not used here
        raise NotImplementedError


def make_cf(seed: int = 0) -> TinyCF:
    torch.manual_seed(seed)
    return TinyCF(CFConfig(n_items=N_ITEMS, n_users=N_USERS, dim=D_CF, max_len=8))


def make_dataset(seed: int = 0) -> SequenceDataset:
    gen = np.random.default_rng(seed)
    texts = [""] + [f"Title: {ADJ[i % 6]} {NOUN[i % 5]} {i}, Brand: B{i % 4}" for i in range(1, N_ITEMS + 1)]
    # Items 29 and 30 only ever appear as test targets: the CF model never learns them.
    seqs = [np.append(gen.choice(np.arange(1, N_ITEMS - 1), size=int(gen.integers(4, 9)), replace=False), 29 + u % 2) for u in range(N_USERS)]
    train_users = np.ones(N_USERS, dtype=bool)
    train_users[-4:] = False  # held-out (cold) users
    return SequenceDataset(
        name="tiny",
        item_ids=np.array(["<pad>"] + [f"i{k}" for k in range(1, N_ITEMS + 1)]),
        titles=texts,
        texts=texts,
        user_ids=np.array([f"u{u}" for u in range(N_USERS)]),
        sequences=seqs,
        valid_candidates=np.zeros((N_USERS, 20), dtype=np.int64),
        test_candidates=np.zeros((N_USERS, 20), dtype=np.int64),
        train_users=train_users,
        fingerprint=f"tiny-{seed}",
    )


@pytest.fixture(scope="module")
def base_encoder() -> TextEncoder:
    torch.set_num_threads(2)
    return load_text_encoder("default", max_seq_length=16)


@pytest.fixture
def encoder(base_encoder: TextEncoder) -> TextEncoder:
    return copy.deepcopy(base_encoder)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLMREC_HOME", str(tmp_path_factory.mktemp("home")))


def cfg(**kw) -> Stage1Config:
    base = dict(lr=1e-3, batch_size=18, epochs=2, max_text_len=16, threads=2, seed=3)
    base.update(kw)
    return Stage1Config(**base)


# ---- model and losses ---------------------------------------------------------------------
def test_architecture_follows_the_authors() -> None:
    m = Stage1Model(50, 384, Stage1Config())
    assert [type(l) for l in m.item_encoder] == [nn.Linear, nn.Sigmoid]
    assert m.item_encoder[0].weight.shape == (128, 50) and m.item_decoder[0].weight.shape == (50, 128)
    assert m.text_encoder[0].weight.shape == (128, 384) and len(m.text_decoder) == 1
    deep = Stage1Model(50, 384, Stage1Config(hidden=[256], d_latent=64))
    assert [l.out_features for l in deep.text_encoder if isinstance(l, nn.Linear)] == [256, 64]
    assert [l.out_features for l in deep.text_decoder if isinstance(l, nn.Linear)] == [256, 384]


def test_losses_by_hand() -> None:
    torch.manual_seed(0)
    m = Stage1Model(4, 6, Stage1Config(d_latent=3, alpha=0.5, beta=0.2))
    x, ep, en, qp, qn = (torch.randn(5, k) for k in (4, 4, 4, 6, 6))
    out = m.losses(x, ep, en, qp, qn)
    e_p, e_n, q_p, q_n = m.encode_items(ep), m.encode_items(en), m.encode_texts(qp), m.encode_texts(qn)
    matching = F.mse_loss(e_p, q_p) + F.mse_loss(e_n, q_n)
    item = F.mse_loss(m.item_decoder(e_p), ep) + F.mse_loss(m.item_decoder(e_n), en)
    text = F.mse_loss(m.text_decoder(q_p), qp) + F.mse_loss(m.text_decoder(q_n), qn)
    sp, sn = (x * m.item_decoder(e_p)).sum(1), (x * m.item_decoder(e_n)).sum(1)
    rec = -(F.logsigmoid(sp).mean() + F.logsigmoid(-sn).mean())
    for key, want in [("matching", matching), ("item_recon", item), ("text_recon", text), ("rec", rec)]:
        torch.testing.assert_close(out[key], want)
    torch.testing.assert_close(out["loss"], matching + 0.5 * item + 0.2 * text + rec)


def test_losses_decrease_on_a_fixed_batch() -> None:
    torch.manual_seed(1)
    m = Stage1Model(D_CF, 384, Stage1Config())
    x, ep, en = (torch.randn(32, D_CF) for _ in range(3))
    qp, qn = F.normalize(torch.randn(32, 384), dim=1), F.normalize(torch.randn(32, 384), dim=1)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = {k: float(v.detach()) for k, v in m.losses(x, ep, en, qp, qn).items()}
    for _ in range(25):
        out = m.losses(x, ep, en, qp, qn)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in m.losses(x, ep, en, qp, qn).items()}
    for k in ("loss", "matching", "item_recon", "text_recon", "rec"):
        assert last[k] < first[k], (k, first[k], last[k])


def test_gradients_reach_autoencoders_and_encoder_not_cf(encoder: TextEncoder) -> None:
    cf = make_cf()
    ds = make_dataset()
    m = Stage1Model(D_CF, encoder.dim, Stage1Config())
    encoder.unfreeze().train()
    pos, neg = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    q = encoder([ds.texts[i] for i in pos.tolist() + neg.tolist()])
    hist = torch.tensor([[0, 0, 5, 6]] * 3)
    cf.requires_grad_(False)
    x = cf.user_representation(torch.zeros(3, dtype=torch.long), hist)
    E = cf.item_embeddings()
    m.losses(x, E[pos], E[neg], q[:3], q[3:])["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    enc_grads = [p.grad for p in encoder.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in enc_grads) > 0.9 * len(enc_grads)
    assert all(p.grad is None for p in cf.parameters())


# ---- training data ------------------------------------------------------------------------
def test_examples_and_negatives() -> None:
    ds = make_dataset()
    last = _build_examples(ds, "last", max_len=8)
    assert len(last.users) == 36 and not np.isin(last.users, np.arange(36, 40)).any()
    for u, p, h in zip(last.users, last.positives, last.histories):
        train = ds.train_sequence(int(u))
        assert p == train[-1]
        assert list(h[h > 0]) == list(train[:-1][-8:])
    every = _build_examples(ds, "all", max_len=8)
    assert len(every.users) == sum(len(ds.train_sequence(u)) - 1 for u in range(36))
    sampler = _NegativeSampler(ds)
    neg = sampler.sample(np.random.default_rng(0), every.users)
    for u, n in zip(every.users, neg):
        assert 1 <= n <= N_ITEMS and n not in ds.sequences[u]


def test_untrained_item_mask() -> None:
    mask = untrained_item_mask(make_dataset())
    assert mask.shape == (N_ITEMS + 1,) and not mask[0]
    assert mask[29] and mask[30]


# ---- training loop ------------------------------------------------------------------------
def test_frozen_encoder_is_bit_identical(encoder: TextEncoder, tmp_path) -> None:
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    res = train_stage1(make_dataset(), make_cf(), encoder, cfg(freeze_text_encoder=True), tmp_path / "run", progress=False)
    assert all(torch.equal(before[k], v) for k, v in encoder.model.state_dict().items())
    assert not (res.checkpoint / "text_encoder").exists()  # only what is trained is saved
    assert not any(k.startswith("text_encoder.") for k in load_tensors(latest_checkpoint(res.checkpoint) / "weights.safetensors"))
    model, enc, config = load_stage1(tmp_path / "run")
    assert enc.fingerprint() == encoder.fingerprint() and config.freeze_text_encoder


@pytest.fixture(scope="module")
def finetuned(base_encoder: TextEncoder, tmp_path_factory) -> dict:
    """One uninterrupted 2-epoch run and one stopped after epoch 1 then resumed (fine-tuned SBERT)."""
    ds, root = make_dataset(), tmp_path_factory.mktemp("stage1")
    cf = make_cf()
    cf.train()
    cf_before = {k: v.clone() for k, v in cf.state_dict().items()}
    enc = copy.deepcopy(base_encoder)
    full = train_stage1(ds, cf, enc, cfg(), root / "full", progress=False)
    train_stage1(ds, make_cf(), copy.deepcopy(base_encoder), cfg(epochs=1), root / "part", progress=False)
    resumed = train_stage1(ds, make_cf(), copy.deepcopy(base_encoder), cfg(), root / "part", progress=False)
    return {"ds": ds, "root": root, "cf": cf, "cf_before": cf_before, "enc": enc, "full": full, "resumed": resumed}


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train_seconds", "cpu_seconds")} for r in history]


def test_train_finetunes_encoder_and_keeps_cf_frozen(finetuned: dict, base_encoder: TextEncoder) -> None:
    cf, full = finetuned["cf"], finetuned["full"]
    assert all(torch.equal(finetuned["cf_before"][k], v) for k, v in cf.state_dict().items())
    assert cf.training and all(p.requires_grad for p in cf.parameters())  # caller's state restored
    assert full.text_encoder is finetuned["enc"] and full.text_encoder.fingerprint() != base_encoder.fingerprint()
    assert not full.text_encoder.training and not full.model.training
    assert [h["epoch"] for h in full.history] == [1, 2]
    for key in ("loss", "matching", "item_recon", "text_recon", "rec", "train_seconds"):
        assert all(np.isfinite(h[key]) for h in full.history)
    assert full.history[-1]["loss"] < full.history[0]["loss"]
    assert full.history[0]["examples"] == 36 and full.history[0]["batches"] == 2
    run = finetuned["root"] / "full"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "done.json", "latest.json", "model.json", "model.safetensors", "text_encoder"]
    assert (run / "text_encoder" / "model.safetensors").exists()


def test_resume_matches_uninterrupted_run(finetuned: dict, base_encoder: TextEncoder) -> None:
    full, resumed = finetuned["full"], finetuned["resumed"]
    assert _strip(resumed.history) == _strip(full.history)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.text_encoder.fingerprint() == full.text_encoder.fingerprint()
    # A finished run is returned as it is, without training.
    again = train_stage1(finetuned["ds"], make_cf(), copy.deepcopy(base_encoder), cfg(), finetuned["root"] / "part", progress=False)
    assert _strip(again.history) == _strip(full.history)
    assert state_fingerprint(again.model.state_dict()) == state_fingerprint(full.model.state_dict())
    # Asking for fewer epochs than the checkpoint holds is an error, not a silent mix-up.
    with pytest.raises(ValueError, match=r"holds \d+ steps \(2 epochs\)"):
        train_stage1(finetuned["ds"], make_cf(), copy.deepcopy(base_encoder), cfg(epochs=1), finetuned["root"] / "part", progress=False)


def test_load_stage1_returns_the_trained_networks(finetuned: dict) -> None:
    full = finetuned["full"]
    model, enc, config = load_stage1(finetuned["root"] / "full")
    assert dataclasses.asdict(config) == dataclasses.asdict(cfg())
    assert state_fingerprint(model.state_dict()) == state_fingerprint(full.model.state_dict())
    assert enc.fingerprint() == full.text_encoder.fingerprint() and enc.max_seq_length == 16
    assert not model.training and not enc.training
    assert not any(p.requires_grad for p in [*model.parameters(), *enc.parameters()])
    assert model.identity["dataset"]["fingerprint"] == "tiny-0"
    assert model.identity["cf"] == cf_identity(finetuned["cf"])


def test_mismatched_checkpoint_is_refused(encoder: TextEncoder, tmp_path) -> None:
    ds, out = make_dataset(), tmp_path / "run"
    frozen = cfg(epochs=1, freeze_text_encoder=True)
    train_stage1(ds, make_cf(), encoder, frozen, out, progress=False)
    with pytest.raises(ValueError, match="CF model"):
        train_stage1(ds, make_cf(seed=1), encoder, dataclasses.replace(frozen, epochs=2), out, progress=False)
    with pytest.raises(ValueError, match="dataset"):
        train_stage1(make_dataset(seed=1), make_cf(), encoder, dataclasses.replace(frozen, epochs=2), out, progress=False)
    with pytest.raises(ValueError, match="alpha"):
        train_stage1(ds, make_cf(), encoder, dataclasses.replace(frozen, epochs=2, alpha=0.1), out, progress=False)
    other = copy.deepcopy(encoder)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="text encoder"):
        train_stage1(ds, make_cf(), other, dataclasses.replace(frozen, epochs=2), out, progress=False)
    # resume=False starts over with the new setting
    res = train_stage1(ds, make_cf(seed=1), encoder, dataclasses.replace(frozen, epochs=1), out, resume=False, progress=False)
    assert res.history[0]["epoch"] == 1


def test_positions_all_uses_every_position(encoder: TextEncoder, tmp_path) -> None:
    ds = make_dataset()
    res = train_stage1(ds, make_cf(), encoder, cfg(epochs=1, positions="all", freeze_text_encoder=True), tmp_path / "r", progress=False)
    assert res.history[0]["examples"] == sum(len(ds.train_sequence(u)) - 1 for u in range(36))


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="positions"):
        Stage1Config(positions="first").validate()
    with pytest.raises(ValueError, match="activation"):
        Stage1Config(latent_activation="swish").validate()


# ---- outputs for stage 2 ------------------------------------------------------------------
def test_joint_item_table_picks_e_or_q() -> None:
    torch.manual_seed(0)
    m = Stage1Model(D_CF, 384, Stage1Config()).eval()
    E, Q = torch.randn(N_ITEMS + 1, D_CF), torch.randn(N_ITEMS + 1, 384)
    mask = np.zeros(N_ITEMS + 1, dtype=bool)
    mask[[3, 29, 30]] = True
    table = joint_item_table(m, E, Q, mask)
    assert table.shape == (N_ITEMS + 1, 128) and not table.requires_grad
    with torch.no_grad():
        e, q = m.encode_items(E), m.encode_texts(Q)
    assert torch.count_nonzero(table[0]) == 0
    for i in range(1, N_ITEMS + 1):
        torch.testing.assert_close(table[i], q[i] if mask[i] else e[i])
    torch.testing.assert_close(joint_item_table(m, E)[1:], e[1:])
    torch.testing.assert_close(joint_item_table(m, E, Q, torch.ones(N_ITEMS + 1, dtype=torch.bool))[1:], q[1:])
    with pytest.raises(ValueError, match="no text embeddings"):
        joint_item_table(m, E, None, mask)
    with pytest.raises(ValueError, match="shape"):
        joint_item_table(m, E, Q, mask[:-1])


def test_each_distinct_item_text_is_encoded_once_per_step(encoder: TextEncoder) -> None:
    from allmrec.align.stage1.training import Stage1Task

    task = Stage1Task(make_dataset(), make_cf(), encoder, cfg(autocast="off"), None)
    encoder.eval()  # no dropout: the same text gives the same vector
    seen: list[list[str]] = []
    real = encoder.forward

    def spy(texts):
        seen.append(list(texts))
        return real(texts)

    encoder.forward = spy
    items = torch.tensor([3, 7, 3, 9, 7, 7])
    q = task._encode(items)
    assert seen == [[task.dataset.texts[i] for i in (3, 7, 9)]]  # once each, not once per occurrence
    with torch.no_grad():
        direct = real([task.dataset.texts[i] for i in items.tolist()])
    torch.testing.assert_close(q.detach(), direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="autocast"):
        Stage1Config(autocast="maybe").validate()


# ---- only the top layers fine-tuned ---------------------------------------------------------
def test_top_layer_tuner_matches_the_full_encoder_and_trains_only_its_top(encoder: TextEncoder) -> None:
    from allmrec.text.top_layers import TopLayerTuner, top_layer_parameters

    texts = make_dataset().texts
    encoder.eval()
    for n in (1, 6):
        tuner = TopLayerTuner(encoder, texts, n)
        rows = [5, 1, 30, 5, 12]
        out = tuner(rows)
        torch.testing.assert_close(out.detach(), encoder.encode([texts[r] for r in rows]), atol=1e-5, rtol=1e-5)
        out.square().sum().backward()
        with_grad = {id(p) for p in encoder.parameters() if p.grad is not None}
        assert with_grad == {id(p) for p in top_layer_parameters(encoder, n)}
        encoder.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="between 1 and the encoder's 6 layers"):
        TopLayerTuner(encoder, texts, 7)


def test_training_only_the_top_layer_changes_nothing_below_it(base_encoder: TextEncoder, tmp_path) -> None:
    from allmrec.text.top_layers import top_layer_parameters

    ds, before = make_dataset(), {k: v.clone() for k, v in base_encoder.model.state_dict().items()}
    enc = copy.deepcopy(base_encoder)
    top = {k for k, v in enc.model.named_parameters() if any(v is p for p in top_layer_parameters(enc, 1))}
    res = train_stage1(ds, make_cf(), enc, cfg(epochs=1, finetune_layers=1), tmp_path / "run", progress=False)
    after = res.text_encoder.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= top and len(changed) == len(top)  # every top-layer weight moved, nothing else
    resumed = train_stage1(ds, make_cf(), copy.deepcopy(base_encoder), cfg(epochs=2, finetune_layers=1), tmp_path / "run", progress=False)
    full = train_stage1(ds, make_cf(), copy.deepcopy(base_encoder), cfg(epochs=2, finetune_layers=1), tmp_path / "full", progress=False)
    assert resumed.text_encoder.fingerprint() == full.text_encoder.fingerprint()
    assert _strip(resumed.history) == _strip(full.history)
    with pytest.raises(ValueError, match="finetune_layers"):
        train_stage1(ds, make_cf(), copy.deepcopy(base_encoder), cfg(epochs=3), tmp_path / "run", progress=False)


def test_a_field_added_later_keeps_older_identities() -> None:
    from allmrec.config import check_resumable, defining_options

    old = {k: v for k, v in dataclasses.asdict(cfg()).items() if k != "finetune_layers"}  # recorded before the field
    assert "finetune_layers" not in defining_options(cfg())  # at its default: the same name as before
    assert defining_options(cfg(finetune_layers=2))["finetune_layers"] == 2
    check_resumable(old, cfg(), "ckpt", "stage-1")
    with pytest.raises(ValueError, match="finetune_layers"):
        check_resumable(old, cfg(finetune_layers=1), "ckpt", "stage-1")
