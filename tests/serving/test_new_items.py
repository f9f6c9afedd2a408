"""Cold start made usable: ``POST /v1/items`` (with ``--allow-writes``) adds items that are
rankable at once through their text (stage-1 ``q_i``; ``f_I^dec(q_i)`` in the CF model), appear
in the ranking of a history close to them in text (and not of a far one), and are still there
after a restart."""

from __future__ import annotations

import shutil

import httpx

from serving_helpers import LiveServer

NEW = [{"item_id": "N1", "title": "golden apple pie", "text": "Title: golden apple, Description: a golden thing from the apple family"},
       {"item_id": "N2", "title": "purple river boat ⛵", "fields": {"description": "a purple thing from the river family"}}]


def ranked(url, history, **extra):
    r = httpx.post(url + "/v1/rank", json={"history": history, "top_k": 6, **extra}, timeout=60)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_added_items_rank_through_their_text_and_survive_a_restart(walkthrough, tmp_path):
    artifact = tmp_path / "model"
    shutil.copytree(walkthrough[2], artifact)
    apples = ["I01", "I02", "I03"]
    with LiveServer(artifact, allow_writes=True, n_candidates=6, cold_slots=1) as live:
        rivers = [i["item_id"] for i in httpx.get(live.url + "/v1/items", params={"q": "river", "limit": 3}).json()["items"]]
        before = ranked(live.url, apples)
        r = httpx.post(live.url + "/v1/items", json={"items": NEW})
        assert r.status_code == 201 and [i["item_id"] for i in r.json()["added"]] == ["N1", "N2"] and r.json()["n_items"] == 26
        assert httpx.post(live.url + "/v1/items", json={"items": [NEW[0]]}).status_code == 409
        near_apples, near_rivers = ranked(live.url, apples), ranked(live.url, rivers)
        assert "N1" in near_apples and "N2" in near_rivers and "N1" not in before
        # The lane kept for added items takes the one closest in text to the history.
        model = live.app.state.allmrec.model
        lane = [model.retrieve([model.catalogue.lookup(h)[0]], 6, cold_slots=1)[0][0] for h in (apples, rivers)]
        assert [model.catalogue.item_ids[i] for i in lane] == ["N1", "N2"]
        assert set(ranked(live.url, ["N1", "I02"], candidates=["N2", "I03", "I04"])) == {"N2", "I03", "I04"}  # in histories and candidates too
        assert httpx.get(live.url + "/v1/items", params={"q": "⛵"}).json()["items"] == [{"item_id": "N2", "title": "purple river boat ⛵"}]
    assert (artifact / "added_items.json").exists()
    with LiveServer(artifact, n_candidates=6, cold_slots=1) as live:  # a restart, read-only
        assert ranked(live.url, apples) == near_apples and "N2" in ranked(live.url, rivers)
        assert httpx.post(live.url + "/v1/items", json={"items": [{"item_id": "N3", "title": "x"}]}).status_code == 403
