"""The Validator's dashboard in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright.

Each page loads without a console error or an uncaught script error, shows the figures the
protocol computes for a known epoch, draws its plots (uPlot, served by the Validator itself:
the browser is offline), and is written as a screenshot under the test's temp dir
(``DNANET_DASHBOARD_SHOTS=DIR`` also copies them there; docs/img/dashboard.png is one).
Skipped, saying why, where Playwright or /usr/bin/chromium is missing (``./run-tests``
installs both when it runs as root).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from dashboard_helpers import DashboardState, make_corpus_for, with_known_state
from dnanet.params import format_dna_short, format_score
from dnanet.protocol.scoring import compute_node_epoch_scores
from dnanet.validator.daemon import ValidatorDaemon
from validator_helpers import Corpus, run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
LABEL = "browser"

playwright_api = pytest.importorskip(
    "playwright.async_api",
    reason="playwright is not installed: ./run-tests installs it with the dev extra")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=(
        "no Chromium at /usr/bin/chromium: ./run-tests installs Debian's chromium when run "
        "as root; or apt-get install chromium")),
]


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return make_corpus_for(LABEL)


class Browser:
    """One headless Chromium; ``open`` loads a page and records every console error."""

    def __init__(self, base_url: str, shots: Path) -> None:
        self.base_url = base_url
        self.shots = shots
        self.errors: list[str] = []

    async def open(self, context: Any, path: str) -> tuple[Any, int]:
        page = await context.new_page()
        page.on("console", lambda m: self.errors.append(f"{path}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"{path}: {e}"))
        response = await page.goto(self.base_url + path, wait_until="load")
        assert response is not None
        return page, response.status

    async def shoot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, name  # a rendered page, not a blank one
        copy = os.environ.get("DNANET_DASHBOARD_SHOTS")
        if copy:
            Path(copy).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(copy) / path.name)
        return path


async def cells(page: Any, table: str) -> list[list[str]]:
    """The text of each row's cells of the table with id ``table``."""
    rows: list[list[str]] = await page.eval_on_selector_all(
        f"#{table} tr", "rows => rows.map(r => Array.from(r.children, c => c.innerText.trim()))")
    return rows


def test_every_page_loads_in_chromium_without_errors_and_shows_the_protocols_figures(
        corpus: Corpus, tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()

    async def body(state: DashboardState, daemon: ValidatorDaemon,
                   client: httpx.AsyncClient) -> None:
        browser = Browser(daemon.url, shots)
        async with playwright_api.async_playwright() as p:
            chromium = await p.chromium.launch(executable_path=str(CHROMIUM),
                                               args=CHROMIUM_ARGS)
            # Offline: anything the pages ask of another host fails the test.
            context = await chromium.new_context(viewport={"width": 1400, "height": 900},
                                                 offline=False)
            outside: list[str] = []

            async def only_local(route: Any) -> None:
                if route.request.url.startswith(daemon.url):
                    await route.continue_()
                else:
                    outside.append(route.request.url)
                    await route.abort()

            await context.route("**/*", only_local)
            try:
                await check_pages(state, browser, context)
            finally:
                await chromium.close()
        assert outside == []
        assert browser.errors == []

    run(with_known_state(corpus, LABEL, tmp_path / "validator", body))
    assert sorted(p.name for p in shots.iterdir()) == sorted([
        "dashboard.png", "epoch.png", "node.png", "node-cheater.png", "node-offline.png"])


async def check_pages(state: DashboardState, browser: Browser, context: Any) -> None:
    preset = state.gateway.preset
    epoch1 = state.replay[1]

    # The overview: epoch 2 collecting, 1 and 0 settled.
    page, status = await browser.open(context, "/?refresh=0")
    assert status == 200
    facts = dict((r[0], r[1]) for r in await cells(page, "facts"))
    assert facts["latest settled epoch"] == "1"
    assert facts["epoch 2"].startswith("block 25 of 32 (78%), ends in about 0 s")
    assert await page.eval_on_selector("#epoch-progress", "e => e.value") == 25
    epochs = {r[0]: r for r in (await cells(page, "epochs"))[1:]}
    assert [epochs[e][1] for e in ("2", "1", "0")] == ["collecting", "settled", "settled"]
    assert epochs["1"][4] == format_dna_short(epoch1.settlement.total)
    so_far = compute_node_epoch_scores(state.open_reports)
    rows = (await cells(page, "nodes"))[1:]
    assert {r[0].removesuffix("..") for r in rows} == {n[:12] for n in so_far}
    await browser.shoot(page, "dashboard")
    await page.close()

    # A settled epoch: the rollup's scores and rewards, as the terminal prints them.
    page, status = await browser.open(context, "/?epoch=1&refresh=0")
    assert status == 200
    header, *rows = await cells(page, "nodes")
    assert header[-2:] == ["reward DNA", "cumulative DNA"]
    links: list[str] = await page.eval_on_selector_all(
        "#nodes a.node", "links => links.map(a => a.getAttribute('href'))")
    expected = sorted(epoch1.epoch_scores, key=lambda n: (-epoch1.epoch_scores[n], n))
    assert links == [f"/nodes/{n}" for n in expected]
    for node, row in zip(expected, rows, strict=True):
        assert row[header.index("score")] == format_score(epoch1.epoch_scores[node])
        assert row[-2] == format_dna_short(epoch1.rewards.get(node, 0))
        assert row[-1] == format_dna_short(epoch1.cumulative.get(node, 0))
    await browser.shoot(page, "epoch")
    await page.close()

    # A node's page: the breakdown of its latest epoch, its history plotted.
    page, status = await browser.open(context, f"/nodes/{state.normal}?refresh=0")
    assert status == 200
    assert await page.locator(".chart .uplot").count() == 5
    history = {r[0].split()[0]: r for r in (await cells(page, "history"))[1:]}
    assert sorted(history) == ["0", "1", "2"]
    for epoch, rollup in enumerate(state.replay):
        assert history[str(epoch)][9] == format_score(rollup.epoch_scores[state.normal])
        assert history[str(epoch)][12] == format_dna_short(rollup.rewards[state.normal])
    provisional = compute_node_epoch_scores(state.open_reports)[state.normal]
    breakdown = {r[0]: r for r in await cells(page, "breakdown")}
    assert breakdown["score"][2] == format_score(provisional.epoch_score(preset))
    assert "(provisional)" in history["2"][0]
    await browser.shoot(page, "node")
    await page.close()

    # The cheater: fraud, jailed and slashed by a quorum-signed punishment.
    page, status = await browser.open(context, f"/nodes/{state.cheater}?refresh=0")
    assert status == 200
    punishments = (await cells(page, "punishments"))[1:]
    assert punishments and punishments[0][1] == "yes"
    assert punishments[0][2] == f"{preset.fraud_slash_bps // 100}.00% of the stake"
    facts = dict((r[0], r[1]) for r in await cells(page, "node-facts"))
    assert facts["registry"] == "jailed"
    failures = (await cells(page, "failures"))[1:]
    assert any(f[3] == "WRONG_ANSWER" for f in failures)
    await browser.shoot(page, "node-cheater")
    await page.close()

    # The offline node: every challenge failed, with the mixer's reason, and a strike.
    page, status = await browser.open(context, f"/nodes/{state.offline}?refresh=0")
    failures = (await cells(page, "failures"))[1:]
    assert failures and all(f[3] == "UNREACHABLE" and f[4] for f in failures)
    facts = dict((r[0], r[1]) for r in await cells(page, "node-facts"))
    struck = [str(e) for e, rollup in enumerate(state.replay) if state.offline in rollup.strikes]
    assert struck
    assert facts[f"strikes in the last {preset.strike_window_epochs} epochs"] == ", ".join(struck)
    await browser.shoot(page, "node-offline")
    await page.close()

    # Errors are pages: a bad number, an epoch not started, a bad or unknown address.
    before = len(browser.errors)
    for path, code, said in [
            ("/?epoch=abc", 400, "?epoch= must be a non-negative integer, got 'abc'"),
            ("/?epoch=99", 404, "epoch 99 has not started: the chain is in epoch 2"),
            ("/nodes/0xabc", 400, "is not a node address"),
            ("/nodes/0x" + "ab" * 20, 404, "is not registered and no challenge of it is stored"),
    ]:
        page, status = await browser.open(context, path)
        assert status == code, path
        assert said in await page.inner_text("#error-message"), path
        await page.close()
    # The browser logs the failed status of the page itself, and nothing else.
    assert all("status of 4" in e for e in browser.errors[before:]), browser.errors[before:]
    del browser.errors[before:]
