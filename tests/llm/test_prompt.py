import numpy as np
import pytest

from allmrec.llm import PromptConfig, SoftToken, build_prompt, display_titles, shuffled_candidates

TITLES = ["", "Toy Story (1995)", "Heat", 'The "Big" Lebowski', "Alien", "Brazil", "Fargo"]
MOVIES = {"item": "movie", "items": "movies", "verb_past": "watched", "verb_next": "watch"}


def test_figure3_prompt_with_dataset_wording():
    p = build_prompt([1, 2], [4, 5, 6], TITLES, MOVIES, target_item=5)
    assert p.render() == (
        '[UserRep] is a user representation. This user has watched "Toy Story (1995)"[ItemEmb], "Heat"[ItemEmb] in the past. '
        'Recommend a movie for this user to watch next from the following set of movie titles, "Alien"[ItemEmb], "Brazil"[ItemEmb], '
        '"Fargo"[ItemEmb]. The recommendation is'
    )
    assert p.parts[0] == SoftToken("user")
    assert [t.item for t in p.soft_tokens if t.kind == "item"] == [1, 2, 4, 5, 6]
    assert p.target == ' "Brazil"' and p.answers == [' "Alien"', ' "Brazil"', ' "Fargo"']
    assert p.candidates == [4, 5, 6] and p.target_item == 5


def test_default_wording_text_style_and_item_token_before():
    text = build_prompt([1], [4, 5], TITLES, {}, PromptConfig(style="text"))
    assert text.soft_tokens == [] and len(text.parts) == 1
    assert text.render() == (
        'This user has bought "Toy Story (1995)" in the past. Recommend a item for this user to buy next '
        'from the following set of item titles, "Alien", "Brazil". The recommendation is'
    )
    before = build_prompt([1], [4], TITLES, None, PromptConfig(item_token="before"))
    assert before.render().startswith('[UserRep] is a user representation. This user has bought [ItemEmb]"Toy Story (1995)" in')
    no_user = build_prompt([1], [4], TITLES, None, PromptConfig(user_token=False))
    assert all(t.kind == "item" for t in no_user.soft_tokens) and no_user.render().startswith("This user has bought")


def test_history_is_cut_to_the_most_recent_items_and_quotes_are_cleaned(smollm):
    _, tok = smollm
    shown = display_titles(TITLES, tok, 0)
    assert shown[3] == "The 'Big' Lebowski"
    p = build_prompt([1, 2, 3, 4, 5], [6], shown, None, PromptConfig(history_len=2))
    assert [t.item for t in p.soft_tokens if t.kind == "item"] == [4, 5, 6]
    empty = build_prompt([], [6], shown, MOVIES, PromptConfig(style="text"))
    assert "This user has not watched any movies yet." in empty.render()


def test_titles_are_cut_to_max_tokens(smollm):
    _, tok = smollm
    long = ["", "one two three four five six seven eight nine ten eleven twelve"]
    cut = display_titles(long, tok, 4)
    assert len(tok(cut[1], add_special_tokens=False)["input_ids"]) == 4
    assert long[1].startswith(cut[1])
    assert display_titles(long, tok, 100) == long


def test_shuffle_is_seeded_and_a_permutation():
    a = shuffled_candidates(range(1, 21), np.random.default_rng(3))
    b = shuffled_candidates(range(1, 21), np.random.default_rng(3))
    assert a == b and sorted(a) == list(range(1, 21)) and a != list(range(1, 21))


def test_bad_prompt_config():
    with pytest.raises(ValueError, match="style"):
        PromptConfig(style="chat")
    with pytest.raises(ValueError, match="item_token"):
        PromptConfig(item_token="middle")
