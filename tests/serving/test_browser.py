"""The web page at ``/`` in a real headless browser: Debian's Chromium driven by Playwright.

The test types a title search, builds a history from the results, ranks, and checks the table
against ``POST /v1/rank``; then picks a test user. It saves a screenshot (``$ALLMREC_SCREENSHOT``
names where, e.g. docs/serve-screenshot.png; else the test's temporary folder). Without
Chromium it fails under CI (``.ci/run`` installs it) and is skipped elsewhere, saying why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from serving_helpers import LiveServer

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-quic"]


def launch_chromium(playwright, profile: Path):
    """Debian's Chromium on a fresh profile, with nothing reaching out to the network."""
    return playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                         viewport={"width": 1100, "height": 760})


def require_browser() -> None:
    missing = [what for what, ok in (("Chromium at /usr/bin/chromium", Path(CHROMIUM).exists()), ("playwright", _has_playwright())) if not ok]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must install {', '.join(missing)} (.ci/run: apt-get install -y chromium chromium-driver; pip install playwright)")
        pytest.skip(f"{', '.join(missing)} not installed (`apt-get install -y chromium chromium-driver`; .ci/run installs it in CI)")


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def rows(page) -> list[list[str]]:
    return page.eval_on_selector_all("#ranking tbody tr", "trs => trs.map(tr => Array.from(tr.children).map(td => td.textContent))")


def test_page_builds_a_history_and_shows_the_ranking_of_the_api(walkthrough, loaded, tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    with LiveServer(walkthrough[2], model=loaded) as live, sync_playwright() as pw:
        context = launch_chromium(pw, tmp_path / "profile")
        page = context.new_page()
        page.goto(live.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        for query in ("blue", "green apple"):
            page.fill("#search", query)
            page.wait_for_selector("#search-results li button.add", timeout=10_000)
            page.wait_for_function("q => document.querySelector('#search-results li span') && "
                                   "document.querySelector('#search-results li span').textContent.includes(q.split(' ')[0])", arg=query)
            page.click("#search-results li:first-child button.add")
        history = page.eval_on_selector_all("#history li", "lis => lis.map(li => li.getAttribute('data-id'))")
        assert len(history) == 2
        page.click("#rank")
        page.wait_for_selector("body[data-ranked]", timeout=30_000)
        shown = rows(page)
        api = httpx.post(live.url + "/v1/rank", json={"history": history, "top_k": 20}).json()
        assert [r[2] for r in shown] == [i["item_id"] for i in api["items"]] and len(shown) == len(api["items"]) > 0
        assert [r[1] for r in shown] == [i["title"] for i in api["items"]]
        assert [float(r[3]) for r in shown] == pytest.approx([i["score"] for i in api["items"]], abs=1e-3)
        assert [float(r[4]) for r in shown] == pytest.approx([i["cf_score"] for i in api["items"]], abs=1e-3)
        assert page.eval_on_selector_all("#chart rect", "rs => rs.length") == 2 * len(shown)
        # A test user: their history and stored candidates, the held-out item marked.
        page.select_option("#users", index=1)
        page.evaluate("document.body.removeAttribute('data-ranked')")
        page.click("#load-user")
        page.wait_for_selector("body[data-ranked]", timeout=30_000)
        assert len(rows(page)) == len(httpx.get(live.url + "/v1/users/" + page.input_value("#users")).json()["candidates"])
        assert page.eval_on_selector_all("#ranking tr.truth", "t => t.length") == 1
        shot = Path(os.environ.get("ALLMREC_SCREENSHOT") or tmp_path / "serve-screenshot.png")
        page.screenshot(path=str(shot), full_page=True)
        context.close()
    assert shot.stat().st_size > 10_000
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
