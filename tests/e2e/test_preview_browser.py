"""The preview page in real headless Chromium: type an email, submit, read the sidebar.

Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver);
skipped only when the browser is not installed. Saves tests/artifacts/preview.png.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

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
    wait_for_state(driver, state)


def wait_for_state(driver: WebDriver, state: str) -> None:
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == state
    )


def page_url(demo: Demo, **params: str) -> str:
    """The preview page with the token and ``params`` (none: no deep link)."""
    return f"{demo.url}/preview?{urlencode({'api_token': demo.token, **params})}"


def statuses(driver: WebDriver) -> dict[str | None, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#connectors tbody tr")
    return {
        row.get_attribute("data-connector"): row.find_elements(By.TAG_NAME, "td")[1].text
        for row in rows
    }


def test_deep_link_renders_the_sidebar_sized_to_its_content(demo: Demo, browser: WebDriver) -> None:
    # The demo prints this link: ?email=ada@example.com runs the preview without a click.
    browser.get(demo.preview_url)
    assert browser.title.startswith("Profile preview")
    template = browser.find_element(By.ID, "template").get_attribute("value") or ""
    assert "{% if stripe_plan %}" in template
    wait_for_state(browser, "rendered")
    assert browser.find_element(By.ID, "email").get_attribute("value") == "ada@example.com"

    assert statuses(browser) == {"stripe": "answered", "db": "answered", "crm": "answered"}
    crm_keys = browser.find_element(By.CSS_SELECTOR, 'tr[data-connector="crm"]').text
    assert "crm_company" in crm_keys
    assert '"stripe_plan": "Pro monthly"' in browser.find_element(By.ID, "profile-json").text
    assert (
        "Nothing is cached for ada@example.com yet"
        in browser.find_element(By.ID, "cache-summary").text
    )

    frame = browser.find_element(By.ID, "sidebar")
    assert frame.get_attribute("sandbox") == "allow-same-origin"
    WebDriverWait(browser, 10).until(lambda d: frame.get_attribute("data-fitted"))
    outer = frame.size["height"]
    browser.switch_to.frame(frame)
    WebDriverWait(browser, 10).until(
        ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Pro monthly")
    )
    sidebar = browser.find_element(By.TAG_NAME, "body").text
    inner = browser.execute_script("return document.documentElement.scrollHeight")
    scripts_ran = browser.execute_script("return 1")  # the driver may; the page's own may not
    browser.switch_to.default_content()
    for text in ("Pro monthly", "$49.00", "Analytical Engines Ltd", "INV-1088", "Sam Rivera"):
        assert text in sidebar, text
    assert scripts_ran == 1
    # The frame is as tall as what it shows: no inner scroll bar, no empty space below.
    assert abs(outer - inner) <= 4, (outer, inner)

    # Previewing another customer updates the address bar: a link to that preview.
    email = browser.find_element(By.ID, "email")
    email.clear()
    email.send_keys("alan@example.com")
    submit(browser, "rendered")
    assert "email=alan%40example.com" in browser.current_url

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(1000, int(height) + 40))
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "preview.png"))


def test_statuses_and_cached_copies_are_in_words(demo: Demo, browser: WebDriver) -> None:
    for email in ("nobody@example.com", "grace@example.com"):
        with urllib.request.urlopen(
            f"{demo.url}/profile?{urlencode({'email': email, 'api_token': demo.token})}"
        ) as response:
            assert response.status == 200
    browser.get(page_url(demo, email="nobody@example.com"))
    wait_for_state(browser, "rendered")
    assert statuses(browser) == {
        "stripe": "no such customer",
        "db": "no such customer",
        "crm": "no such customer",
    }
    table = browser.find_element(By.ID, "connectors").text
    assert "fresh copy from" in table and "ago: no such customer" in table
    summary = browser.find_element(By.ID, "cache-summary").text
    assert "The cached copy for nobody@example.com is fresh, fetched" in summary
    page = browser.find_element(By.TAG_NAME, "main").text
    for code in ("not_found", "bypass", "stale (", " s old)"):
        assert code not in page, code


def test_a_template_error_is_shown_on_the_page(demo: Demo, browser: WebDriver) -> None:
    browser.get(page_url(demo))
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
    browser.get(page_url(demo))
    browser.execute_script("document.getElementById('email').type = 'text'")
    browser.find_element(By.ID, "email").send_keys("not an email")
    submit(browser, "request-error")
    assert "not a valid address" in browser.find_element(By.ID, "request-error").text


def test_a_deep_link_email_is_only_ever_an_email(demo: Demo, browser: WebDriver) -> None:
    """Issue 11: ``email=__TEMPLATE__`` must not pull the template into the field."""
    browser.get(page_url(demo, email="__TEMPLATE__"))
    email = browser.find_element(By.ID, "email")
    assert email.get_attribute("value") == "__TEMPLATE__"
    template = browser.find_element(By.ID, "template").get_attribute("value") or ""
    assert template.startswith("{% comment %}") and "__TEMPLATE__" not in template
    # Not an address: the browser's own check stops the automatic run before any request.
    assert (
        browser.execute_script("return document.getElementById('email').checkValidity()") is False
    )
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") is None
