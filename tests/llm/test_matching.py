from allmrec.llm.matching import extract_answer, match_candidates, normalize_title


def test_normalize_title():
    assert normalize_title(' "Toy Story (1995)" ') == "toy story 1995"
    assert normalize_title("Spider-Man: Far  From Home!") == "spiderman far from home"
    assert normalize_title("L'Oréal Paris") == "loréal paris"
    assert normalize_title("“Curly quotes”") == "curly quotes"
    assert normalize_title("   ") == ""


def test_extract_answer_prefers_the_first_quoted_title_on_the_first_line():
    assert extract_answer(' "Heat"') == "Heat"
    assert extract_answer(' "Heat" and then "Alien"') == "Heat"
    assert extract_answer(" Heat\nbecause the user likes crime") == "Heat"
    assert extract_answer("") == ""


def test_matching_is_exact_not_substring():
    titles = ["", "Heat", "Heat 2", "Alien", "ALIEN!"]
    assert match_candidates("heat", [1, 2, 3], titles) == [1]
    assert match_candidates("Heat 2 (extended)", [1, 2, 3], titles) == []
    assert match_candidates("alien", [4, 3], titles) == [4, 3]  # both normalise to "alien"; prompt order kept
    assert match_candidates("", [1], titles) == []


def test_generation_may_stop_once_the_answer_cannot_change():
    from allmrec.llm.reader import answer_complete

    for text in [' "Heat"', ' to buy "Heat" next', " Heat\nmore"]:
        assert answer_complete(text)
        assert extract_answer(text) == extract_answer(text + ' and "Alien"\nmore text')
    assert not answer_complete(' "Hea')
    assert not answer_complete("\nHeat")
