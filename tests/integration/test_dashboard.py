"""The live dashboard in a real browser: Debian's Chromium, driven by playwright,
reads the numbers off the page during a sale and leaves a screenshot."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import fresh_id
from tests.integration.conftest import LiveStack

CHROMIUM = shutil.which("chromium")
# The flags a root, offline, screenless machine needs (no sandbox as root, no
# calls home, no GPU).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(".flashsale") / "screenshots" / "dashboard.png"


async def test_the_dashboard_shows_a_sale_live(
    live: LiveStack, http: aiohttp.ClientSession
) -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (make browser-deps could not install it)")
    from playwright.async_api import async_playwright  # noqa: PLC0415

    item_id = fresh_id("dash")
    url = f"{live.url}/v1/items/{item_id}"
    async with http.put(url, json={"stock": 7}, headers=live.admin_headers) as response:
        assert response.status == 201
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(f"{live.url}/dashboard")
            row = page.locator(f'#items tr[data-item="{item_id}"]')
            await row.wait_for(timeout=15_000)
            assert await row.locator("td").nth(2).inner_text() == "0"
            for n in range(3):
                headers = live.user_headers(f"dash-{n}", secrets.token_hex(4))
                async with http.post(
                    f"{live.url}/v1/purchases", json={"item_id": item_id}, headers=headers
                ) as response:
                    assert response.status == 202
            # The page updates itself: sold reaches 3 without a reload.
            await page.wait_for_function(
                """id => {
                    const row = document.querySelector(`#items tr[data-item="${id}"]`);
                    return row && row.children[2].textContent === "3";
                }""",
                arg=item_id,
                timeout=30_000,
            )
            cells = await row.locator("td").all_inner_texts()
            assert cells[:4] == [item_id, "7", "3", "4"]
            partitions = page.locator("#partitions tbody tr")
            assert await partitions.count() == live.settings.partitions
            lag = await partitions.first.locator("td").nth(5).inner_text()
            assert lag.isdigit()
            assert "dash-0" not in await page.content()  # no user data on it
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            await browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
