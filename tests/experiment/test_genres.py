import dataclasses

import numpy as np
import pytest
import torch

import allmrec.experiment.genres as genres_mod
from allmrec.align import Stage2Model
from allmrec.experiment.genres import (
    GenreConfig,
    build_genre_prompt,
    favourite_genres,
    global_genre_counts,
    item_genres,
    offered_genres,
    parse_genres,
    precision_at_k,
    top_genres,
)
from allmrec.llm import PromptConfig, SoftToken, build_prompt
from helpers import tiny_cf, tiny_dataset

ML_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
MOVIES = {"item": "movie", "items": "movies", "verb_past": "watched", "verb_next": "watch"}
CYCLE = ["Action, Comedy", "Drama", "Children's, Animation", "Sci-Fi", "unknown", "Comedy, Drama"]


def with_genres(ds, values=None):
    values = values or [""] + [CYCLE[i % len(CYCLE)] for i in range(ds.n_items)]
    return dataclasses.replace(ds, item_fields={**ds.item_fields, "genres": values}, wording=MOVIES)


@pytest.fixture(scope="module")
def tiny():
    return with_genres(tiny_dataset(n_users=3, n_items=12, seq_len=5, n_candidates=4))


def test_item_genres_split_drop_placeholders_and_name_a_missing_field(tiny):
    g = item_genres(tiny)
    assert g[0] == [] and g[1] == ["Action", "Comedy"] and g[3] == ["Children's", "Animation"] and g[5] == []
    with pytest.raises(ValueError, match="no item field 'genre'.*item fields: genres"):
        item_genres(tiny, "genre")
    with pytest.raises(ValueError, match="'genres' has 3 rows"):
        item_genres(dataclasses.replace(tiny, item_fields={"genres": ["", "a", "b"]}))


def test_truth_is_the_most_watched_genres_with_ties_by_global_frequency_then_name():
    genres_of = [[], ["Comedy", "Drama"], ["Action"], ["Horror"], ["Drama"], ["Western"]]
    glob = {"Drama": 9, "Action": 5, "Comedy": 5, "Horror": 5, "Western": 1}
    # Drama 2; Action, Comedy, Horror, Western 1 each: Western loses on global count; Action beats
    # Comedy and Horror (same global count 5) on name.
    assert top_genres([1, 4, 2, 3, 5], genres_of, 3, glob) == ["Drama", "Action", "Comedy"]
    assert top_genres([5, 5, 3], genres_of, 3, glob) == ["Western", "Horror"]  # fewer genres than k
    assert top_genres([5, 5, 3, 3, 2], genres_of, 1, glob) == ["Horror"]  # 2 vs 2: Horror is more popular


def test_global_counts_use_training_interactions_only(tiny):
    counts = global_genre_counts(tiny, item_genres(tiny))
    train = tiny.train_item_counts()
    assert counts["Drama"] == int(sum(train[i] for i in range(1, tiny.n_items + 1) if "Drama" in CYCLE[(i - 1) % 6]))
    assert list(counts) == sorted(counts, key=lambda g: (-counts[g], g))
    assert set(counts) == {"Action", "Comedy", "Drama", "Children's", "Animation", "Sci-Fi"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" Drama, Comedy and Action.", ["Drama", "Comedy", "Action"]),
        (" comedies, science fiction and film noir", ["Comedy", "Sci-Fi", "Film-Noir"]),
        (" Childrens, CHILDREN'S and kids' animation", ["Children's", "Animation"]),
        (" Sci Fi, scifi, sci-fi", ["Sci-Fi"]),
        (' "Star Wars" is a war film', ["War"]),  # "Wars" in a title is no genre
        (" melodrama, thrilling, Westerner", []),  # whole words only
        (":\n\n1. Horror\n2. Mystery\n3. Romance", ["Horror", "Mystery", "Romance"]),
        ("", []),
    ],
)
def test_parsing_finds_known_genres_in_order_of_first_appearance(text, expected):
    assert parse_genres(text, ML_GENRES) == expected


def test_precision_at_k_counts_hits_among_the_first_k_over_k():
    truth = ["Drama", "Comedy", "Action"]
    assert precision_at_k(["Comedy", "Horror", "Drama", "Action"], truth, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["Drama"], truth, 3) == pytest.approx(1 / 3)  # a short answer scores less
    assert precision_at_k([], truth, 3) == 0.0
    assert precision_at_k(["Action", "Comedy", "Drama"], truth, 3) == 1.0


def test_soft_prompt_has_user_and_history_slots_and_the_text_prompt_none():
    titles = ["", "Heat", "Alien", "Fargo", "Brazil"]
    soft = build_genre_prompt([1, 2, 3, 4], titles, MOVIES, PromptConfig(history_len=3), ["Drama", "Horror"], k=2)
    assert soft.soft_tokens == [SoftToken("user"), SoftToken("item", 2), SoftToken("item", 3), SoftToken("item", 4)]
    assert soft.render() == (
        '[UserRep] is a user representation. This user has watched "Alien"[ItemEmb], "Fargo"[ItemEmb], "Brazil"[ItemEmb] in the past.'
        " The genres are Drama, Horror. This user's two favourite genres are"
    )
    text = build_genre_prompt([1, 2, 3, 4], titles, MOVIES, PromptConfig(style="text", history_len=3), ["Drama", "Horror"], k=2)
    assert text.soft_tokens == [] and text.render() == soft.render().replace("[UserRep] is a user representation. ", "").replace("[ItemEmb]", "")
    # The history is rendered exactly as in the recommendation prompt.
    rec = build_prompt([1, 2, 3, 4], [1], titles, MOVIES, PromptConfig(history_len=3)).render()
    assert rec.split(" in the past.")[0] == soft.render().split(" in the past.")[0]
    assert text.candidates == [] and text.target is None


def test_genres_are_offered_in_a_seeded_order_per_user():
    cfg = GenreConfig(seed=3)
    a, b = offered_genres(ML_GENRES, 0, cfg), offered_genres(ML_GENRES, 1, cfg)
    assert a == offered_genres(ML_GENRES, 0, cfg) and sorted(a) == sorted(ML_GENRES) and a != b
    assert offered_genres(ML_GENRES, 0, GenreConfig(shuffle_genres=False)) == ML_GENRES


@pytest.mark.slow
def test_scores_on_hand_made_answers(smollm, tiny, monkeypatch):
    llm, tok = smollm
    answers = [" Drama, Comedy and Horror.", " nothing I know", " science fiction and kids movies"]
    monkeypatch.setattr(genres_mod, "greedy_generate", lambda llm, batch, n, eos, stop=None: [tok(a, add_special_tokens=False)["input_ids"] for a in answers])
    cfg = GenreConfig(k=2, batch_size=3)
    res = favourite_genres(tiny, llm, tok, [0, 1, 2], config=cfg, n_examples=2)
    genres_of, glob = item_genres(tiny), global_genre_counts(tiny, item_genres(tiny))
    truth = [top_genres(tiny.history(u, "test"), genres_of, 2, glob) for u in range(3)]
    parsed = [["Drama", "Comedy"], [], ["Sci-Fi", "Children's"]]
    assert res["precision@k"] == pytest.approx(np.mean([precision_at_k(p, t, 2) for p, t in zip(parsed, truth)]))
    assert res["coverage"] == pytest.approx(2 / 3)
    assert res["popularity"] == list(glob)[:2]
    assert res["popularity_precision@k"] == pytest.approx(np.mean([precision_at_k(list(glob)[:2], t, 2) for t in truth]))
    assert res["users"] == 3 and res["method"] == "llm-only" and res["k"] == 2
    assert [e["parsed"] for e in res["examples"]] == parsed[:2] and [e["truth"] for e in res["examples"]] == truth[:2]
    assert res["examples"][0]["history_titles"] == [tiny.titles[i] for i in tiny.history(0, "test")[-5:]]


@pytest.mark.slow
def test_end_to_end_with_an_untrained_stage2_model_and_llm_only(smollm, tiny):
    llm, tok = smollm
    cf = tiny_cf(tiny)
    joint = torch.randn(tiny.n_items + 1, 16, generator=torch.Generator().manual_seed(1))
    stage2 = Stage2Model(cf.dim, 16, llm.get_input_embeddings().weight.shape[1], seed=0)
    cfg = GenreConfig(history_len=3, max_title_tokens=6, max_new_tokens=6, batch_size=2)
    soft = favourite_genres(tiny, llm, tok, [0, 1, 2], stage2=stage2, cf_model=cf, joint_items=joint, config=cfg)
    text = favourite_genres(tiny, llm, tok, [0, 1, 2], config=cfg, n_examples=1)
    for res, method in ((soft, "a-llmrec"), (text, "llm-only")):
        assert res["method"] == method and res["users"] == 3
        for key in ("precision@k", "coverage", "popularity_precision@k", "copied_list@k"):
            assert 0.0 <= res[key] <= 1.0
        for e in res["examples"]:
            assert isinstance(e["generated"], str) and set(e["parsed"]) <= set(res["genres"])
            assert e["parsed"] == parse_genres(e["generated"], res["genres"]) and len(e["history_titles"]) == 3
    assert len(soft["examples"]) == 3 and len(text["examples"]) == 1
    # Same text prompt, same answers: deterministic; the soft tokens change what the LLM says.
    again = favourite_genres(tiny, llm, tok, [0], config=cfg)
    assert again["examples"][0]["generated"] == text["examples"][0]["generated"]
    assert [e["generated"] for e in soft["examples"]] != [text["examples"][0]["generated"]] * 3
    with pytest.raises(ValueError, match="joint_items"):
        favourite_genres(tiny, llm, tok, [0], stage2=stage2, cf_model=cf, config=cfg)
    with pytest.raises(ValueError, match="needs cf_model"):
        favourite_genres(tiny, llm, tok, [0], stage2=stage2, joint_items=joint, config=cfg)
