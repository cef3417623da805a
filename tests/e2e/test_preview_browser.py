"""The preview page in real headless Chromium: type an email, submit, read the sidebar.

Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver);
skipped only when the browser is not installed. Saves tests/artifacts/preview.png.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from aggregator.demo import Demo, start_demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (apt-get install chromium)"
)


@pytest.fixture
def demo(postgres_dsn: str) -> Iterator[Demo]:
    """The demo, served from its own event loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="demo-loop", daemon=True)
    thread.start()
    try:
        running = asyncio.run_coroutine_threadsafe(
            start_demo(0, database_url=postgres_dsn), loop
        ).result(timeout=60)
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(running.close(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium through Debian's chromedriver, with a throwaway profile."""
    # The driver and browser are given: Selenium Manager must not look anything up online.
    monkeypatch.setenv("SE_OFFLINE", "true")
    monkeypatch.setenv("SE_AVOID_STATS", "true")
    profile = tempfile.mkdtemp(prefix="aggregator-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def submit(driver: WebDriver, state: str) -> None:
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
    )


def test_preview_page_renders_the_sidebar_in_a_browser(demo: Demo, browser: WebDriver) -> None:
    browser.get(demo.preview_url)
    assert browser.title.startswith("Profile preview")
    template = browser.find_element(By.ID, "template").get_attribute("value") or ""
    assert "{% if stripe_plan %}" in template

    browser.find_element(By.ID, "email").send_keys("ada@example.com")
    submit(browser, "rendered")

    rows = browser.find_elements(By.CSS_SELECTOR, "#connectors tbody tr")
    statuses = {
        row.get_attribute("data-connector"): row.find_elements(By.TAG_NAME, "td")[1].text
        for row in rows
    }
    assert statuses == {"stripe": "ok", "db": "ok", "crm": "ok"}
    crm_keys = browser.find_element(By.CSS_SELECTOR, 'tr[data-connector="crm"]').text
    assert "crm_company" in crm_keys
    assert '"stripe_plan": "Pro monthly"' in browser.find_element(By.ID, "profile-json").text

    frame = browser.find_element(By.ID, "sidebar")
    assert frame.get_attribute("sandbox") == ""
    browser.switch_to.frame(frame)
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Pro monthly")
    )
    sidebar = browser.find_element(By.TAG_NAME, "body").text
    browser.switch_to.default_content()
    for text in ("Pro monthly", "$49.00", "Analytical Engines Ltd", "INV-1088", "Sam Rivera"):
        assert text in sidebar, text

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, int(height) + 40))
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "preview.png"))


def test_a_template_error_is_shown_on_the_page(demo: Demo, browser: WebDriver) -> None:
    browser.get(demo.preview_url)
    browser.find_element(By.ID, "email").send_keys("grace@example.com")
    template = browser.find_element(By.ID, "template")
    template.clear()
    template.send_keys("{% if stripe_plan %}never closed")
    submit(browser, "template-error")
    error = browser.find_element(By.ID, "template-error")
    assert error.is_displayed()
    assert "endif" in error.text
    assert not browser.find_element(By.ID, "sidebar").is_displayed()
    assert '"crm_owner": "Priya Natarajan"' in browser.find_element(By.ID, "profile-json").text


def test_a_bad_email_is_shown_on_the_page(demo: Demo, browser: WebDriver) -> None:
    browser.get(demo.preview_url)
    browser.execute_script("document.getElementById('email').type = 'text'")
    browser.find_element(By.ID, "email").send_keys("not an email")
    submit(browser, "request-error")
    assert "not a valid address" in browser.find_element(By.ID, "request-error").text
