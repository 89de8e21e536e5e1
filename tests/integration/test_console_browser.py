"""The console in a real browser: Debian's headless Chromium driven by selenium, on a whole running gateway.

What an operator does, in order: each role signs in; a search finds a message and opens
it; a viewer sees its envelope masked, an operator in full; a dead letter (the recipient
refuses it) shows in the list, is previewed and replayed from the console and ends
DELIVERED with the operator in its trail; a viewer has no replay button and its POST is
refused; a POST without the CSRF token is refused; the admin's audit shows it all.
A screenshot of each page is saved under the test's directory (and copied to
``$ZL_SCREENSHOTS_DIR`` when set: that is how docs/img/ is made).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from adapters.console.operators import hash_password
from demo.emulators.rest_recipient import RecipientServer
from tests.support import configs
from tests.support.configs import LAB_TOKEN
from tests.support.gateway_proc import envelope_json, notice

pytestmark = pytest.mark.broker

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
SNILS = "11223344595"
PASSWORDS = {"ivanova": "admin-password-1", "sidorov": "operator-password-1", "petrov": "viewer-password-1"}
ROLES = {"ivanova": "admin", "sidorov": "operator", "petrov": "viewer"}


def _operators() -> str:
    lines = ["operators:"]
    for name, role in ROLES.items():
        lines.append(f'  - {{name: {name}, role: {role}, password_hash: "{hash_password(PASSWORDS[name])}"}}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            raise RuntimeError(f"{path} is missing: scripts/test installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="zl-chromium-", dir=tmp_path)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--window-size=1366,900",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "ru,en"})  # the console's default
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    def __init__(self, driver: webdriver.Chrome, directory: Path) -> None:
        self.driver, self.dir = driver, directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.copy_to = Path(os.environ["ZL_SCREENSHOTS_DIR"]) if os.environ.get("ZL_SCREENSHOTS_DIR") else None

    def __call__(self, name: str) -> None:
        path = self.dir / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), name
        if self.copy_to is not None:
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.copy_to / path.name)


def submit(driver: webdriver.Chrome, element_id: str, lands_on: str) -> None:
    """Click a button or link and wait for the page it leads to (a click does not wait for a form's answer)."""
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, 15).until(lambda d: lands_on in d.current_url and d.execute_script(
        "return document.readyState") == "complete")


def sign_in(driver: webdriver.Chrome, base: str, name: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{base}/console/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "sign-in").click()
    # argon2 takes its time on purpose, more so on a loaded machine: wait for the signed-in page.
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.ID, "operator"))
    assert driver.find_element(By.ID, "operator").text == f"{name} · {ROLES[name]}"


def post_from_page(driver: webdriver.Chrome, path: str, with_csrf: bool, message_id: str) -> int:
    """POST a replay from inside the page, as a forged form or a curious viewer would; the HTTP status."""
    return int(driver.execute_async_script("""
        const [path, withCsrf, id, done] = arguments;
        const body = new URLSearchParams({scope: "selected", id: id});
        if (withCsrf) body.set("csrf", document.querySelector("input[name=csrf]").value);
        fetch(path, {method: "POST", body: body, credentials: "same-origin"}).then(r => done(r.status));
    """, path, with_csrf, message_id))


def test_an_operators_day_in_a_real_browser(gateway_factory, browser, tmp_path) -> None:
    clinic = RecipientServer(name="clinic").start()
    try:
        gw = gateway_factory(configs.participants(clinic.url), configs.routes(attempts=1),
                             settings=configs.settings(), files={"operators.yaml": _operators()})
        base = gw.base
        shot = Shots(browser, tmp_path / "screenshots")
        delivered = envelope_json("lab", "clinic", notice(snils=SNILS))
        gw.post(delivered, LAB_TOKEN).raise_for_status()
        gw.wait_status(delivered["messageId"], LAB_TOKEN, "DELIVERED")
        clinic.answer_with = 400  # the recipient refuses the next one for good: a dead letter
        dead = envelope_json("lab", "clinic", notice(code="RESULT_READY", snils=SNILS))
        gw.post(dead, LAB_TOKEN).raise_for_status()
        gw.wait_status(dead["messageId"], LAB_TOKEN, "DEAD")
        clinic.answer_with = None

        # Each role signs in; pages need a session.
        browser.get(f"{base}/console/messages")
        assert browser.current_url.startswith(f"{base}/console/login")
        shot("01-login")
        for name in ("ivanova", "sidorov", "petrov"):
            sign_in(browser, base, name)

        # A viewer searches, opens the message, sees the envelope masked; no replay button, its POST refused.
        browser.find_element(By.NAME, "message_id").send_keys(delivered["messageId"])
        submit(browser, "search-button", "message_id=")
        assert "1" in browser.find_element(By.ID, "count").text
        shot("02-messages-search")
        browser.get(browser.find_element(By.LINK_TEXT, delivered["messageId"]).get_attribute("href"))
        assert browser.find_element(By.ID, "message-status").text == "DELIVERED"
        assert "intact" in browser.find_element(By.ID, "chain").text.lower() or "цела" in browser.find_element(
            By.ID, "chain").text
        submit(browser, "show-envelope", "envelope=1")
        envelope = browser.find_element(By.ID, "envelope-text").text
        assert SNILS not in envelope and "SNILS" in envelope and browser.find_elements(By.ID, "masked-note")
        shot("03-message-viewer-masked")
        browser.get(f"{base}/console/messages/{dead['messageId']}")
        assert browser.find_element(By.ID, "message-status").text == "DEAD" and not browser.find_elements(By.ID,
                                                                                                           "replay")
        assert post_from_page(browser, "/console/dead/run", True, dead["messageId"]) == 403
        assert gw.status(dead["messageId"], LAB_TOKEN)["status"] == "DEAD"

        # The operator: the full envelope, the dead letter in its list, a preview, the replay.
        sign_in(browser, base, "sidorov")
        browser.get(f"{base}/console/messages/{delivered['messageId']}?envelope=1")
        assert SNILS in browser.find_element(By.ID, "envelope-text").text
        assert not browser.find_elements(By.ID, "masked-note")
        shot("04-message-operator-full")
        assert post_from_page(browser, "/console/dead/run", False, dead["messageId"]) == 403  # no CSRF token
        browser.get(f"{base}/console/dead")
        assert dead["messageId"] in browser.find_element(By.ID, "results").text
        assert delivered["messageId"] not in browser.find_element(By.ID, "results").text
        shot("05-dead-letters")
        browser.find_element(By.CSS_SELECTOR, f"input[name=id][value='{dead['messageId']}']").click()
        submit(browser, "preview-selected", "/console/dead/preview")
        assert "1" in browser.find_element(By.ID, "preview-total").text
        assert "clinic" in browser.find_element(By.ID, "preview").text
        shot("06-replay-preview")
        submit(browser, "confirm", "/console/dead/run")
        assert dead["messageId"] in browser.find_element(By.ID, "done").text
        final = gw.wait_status(dead["messageId"], LAB_TOKEN, "DELIVERED")
        replayed = [e for e in final["trail"] if e["event"] == "REPLAYED"]
        assert replayed and replayed[0]["actor"] == "console:sidorov" and final["trailIntact"]
        browser.get(f"{base}/console/messages/{dead['messageId']}")
        assert browser.find_element(By.ID, "message-status").text == "DELIVERED"
        assert "console:sidorov" in browser.find_element(By.ID, "trail").text
        shot("07-message-replayed")
        for page in ("stuck", "labs", "acts", "registry"):
            browser.get(f"{base}/console/{page}")
            shot(f"08-{page}")

        # The admin: the system page with the configuration check, and the audit of everything above.
        sign_in(browser, base, "ivanova")
        browser.get(f"{base}/console/system")
        assert "OK" in browser.find_element(By.ID, "check-config").text or "порядке" in browser.find_element(
            By.ID, "check-config").text
        assert "lab-to-clinic" in browser.find_element(By.ID, "routes").text
        shot("09-system")
        browser.get(f"{base}/console/audit")
        audit = browser.find_element(By.ID, "audit").text
        shot("10-audit")
        for who, action in (("petrov", "view_payload"), ("sidorov", "view_payload"), ("petrov", "forbidden"),
                            ("sidorov", "csrf_refused"), ("sidorov", "replay"), ("ivanova", "login")):
            assert any(who in line and action in line for line in audit.splitlines()), (who, action, audit)
        browser.get(f"{base}/console/messages?lang=en")
        assert browser.find_element(By.ID, "nav-messages").text == "Messages"
        shot("11-messages-english")
    finally:
        clinic.stop()
