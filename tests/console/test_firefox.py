"""The web console's main path in headless Firefox (issue #14: current
Chromium and Firefox). Playwright cannot drive Debian's Firefox, so this
goes through WebDriver: Debian's firefox-esr, Mozilla's geckodriver (built
from crates.io by .ci/run into ~/.cache/ecsd/tools; $GECKODRIVER, .tools/bin
or PATH also do) and Selenium, against its own real
`ecsd serve --dev`: sign in as the dev user, filter the servers, select the
Linux ones, see a weak password's broken rule, dry run, reset with restart,
watch every server reach APPLIED, find the call in the audit view, sign out.
The browser's console is watched through WebDriver BiDi: no script error,
no console error, and no CSP violation (a preload script records each
`securitypolicyviolation` event from the first byte of every page).

Skipped, with the reason, only when Firefox or geckodriver is missing, and
never under CI (CI=true), where .ci/run installs both."""

import os
import pathlib
import re
import shutil
import time

import pytest

from conftest import ROOT, Ecsd

STRONG = "Fleet-Reset-42x"


def _find(env, candidates):
    if os.environ.get(env):
        return os.environ[env] if pathlib.Path(os.environ[env]).exists() else None
    for c in candidates:
        p = c if os.path.isabs(c) else shutil.which(c)
        if p and pathlib.Path(p).exists():
            return p
    return None


FIREFOX = _find("FIREFOX", ["/usr/bin/firefox-esr", "firefox-esr", "firefox"])
GECKODRIVER = _find("GECKODRIVER", [
    str(ROOT / ".tools" / "bin" / "geckodriver"),
    str(pathlib.Path.home() / ".cache" / "ecsd" / "tools" / "bin" / "geckodriver"),
    "geckodriver"])


def _missing():
    gone = []
    if not FIREFOX:
        gone.append("Firefox (apt-get install -y firefox-esr)")
    if not GECKODRIVER:
        gone.append("geckodriver (CARGO_INSTALL_ROOT=.tools cargo install geckodriver --version 0.37.1 --locked)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        gone.append("selenium (tests/console/requirements.txt)")
    return gone


@pytest.fixture(scope="module")
def firefox():
    gone = _missing()
    if gone:
        reason = "Firefox end to end needs " + ", ".join(gone)
        if os.environ.get("CI"):
            pytest.fail(reason + " — .ci/run installs them, so CI must have them")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.firefox.service import Service

    # Selenium Manager must not look for a driver or browser online.
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.FirefoxOptions()
    opts.binary_location = FIREFOX
    opts.add_argument("-headless")
    # The dev CA is not in Firefox's store (the Rust and SDK suites verify it).
    opts.accept_insecure_certs = True
    opts.enable_bidi = True
    opts.set_preference("intl.accept_languages", "en-US")
    d = webdriver.Firefox(options=opts, service=Service(executable_path=GECKODRIVER, log_output=os.devnull))
    d.set_window_size(1280, 900)
    d.problems = []
    # Every page: its CSP violations, recorded before any of its own script.
    d.script.add_preload_script(
        "() => { window.__csp = []; document.addEventListener('securitypolicyviolation', "
        "e => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline'))); }")
    d.script.add_console_message_handler(
        lambda m: m.level in ("error", "warn") and d.problems.append(f"console {m.level}: {m.text}"))
    d.script.add_javascript_error_handler(lambda e: d.problems.append(f"script error: {e.text}"))
    yield d
    d.quit()


@pytest.fixture(scope="module")
def ecsd_ff(tmp_path_factory):
    e = Ecsd(tmp_path_factory.mktemp("firefox") / "data")
    yield e
    e.stop()


def wait(d, cond, what, timeout=15):
    """Polls `cond()` until it is truthy; fails naming `what`."""
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # a node replaced while read: look again
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (url {d.current_url}; {last})")


def by_label(d, text):
    """The control a <label> with exactly this text names (as a person finds it)."""
    el = d.execute_script(
        "return [...document.querySelectorAll('label')]"
        ".find(l => l.textContent.trim() === arguments[0])?.control || null", text)
    assert el is not None, f"no control labelled {text!r}"
    return el


def button(d, text):
    from selenium.webdriver.common.by import By
    return d.find_element(By.XPATH, f"//button[normalize-space(.)={xpath_str(text)}]")


def xpath_str(s):
    return "'" + s + "'" if "'" not in s else 'concat("' + s.replace('"', '", \'"\', "') + '")'


def texts(d, css):
    from selenium.webdriver.common.by import By
    return [e.text.strip() for e in d.find_elements(By.CSS_SELECTOR, css)]


def text(d, css):
    from selenium.webdriver.common.by import By
    return d.find_element(By.CSS_SELECTOR, css).text.strip()


def choose(select_el, value):
    from selenium.webdriver.support.ui import Select
    Select(select_el).select_by_value(value)


def page_csp(d):
    """This page's CSP violations, added to the driver's problems."""
    seen = d.execute_script("return window.__csp || []")
    d.problems.extend(f"CSP: {v} on {d.current_url}" for v in seen)


def test_the_main_path_in_firefox(firefox, ecsd_ff):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d, e = firefox, ecsd_ff
    d.get(e.creds["console"])
    wait(d, lambda: d.current_url.endswith("/console/login"), "the sign-in page")
    assert d.execute_script("return navigator.userAgent").find("Firefox/") > 0
    page_csp(d)
    by_label(d, "Domain").send_keys(e.creds["domain"])
    by_label(d, "User name").send_keys(e.creds["user"])
    by_label(d, "Password").send_keys(e.creds["password"])
    by_label(d, "Project (name or id)").send_keys("dev")
    button(d, "Sign in").click()
    wait(d, lambda: d.current_url.endswith("/console/servers"), "the servers page")
    wait(d, lambda: len(texts(d, "#servers tbody tr")) == 4, "4 servers listed")
    # The session cookie never reaches script.
    assert "__Host-ecsd-session" not in d.execute_script("return document.cookie")
    page_csp(d)

    # Filter: Linux only, then the header checkbox by keyboard.
    choose(by_label(d, "OS"), "Linux")
    button(d, "Apply filters").click()
    wait(d, lambda: re.match(r"^3 servers match", text(d, "#servers-summary")), "3 servers match")
    wait(d, lambda: len(texts(d, "#servers tbody tr")) == 3, "3 rows")
    head = d.find_element(By.CSS_SELECTOR, "[aria-label='Select every server on this page']")
    d.execute_script("arguments[0].focus()", head)
    head.send_keys(Keys.SPACE)
    wait(d, lambda: text(d, "#selection-count") == "3 selected.", "3 selected")
    button(d, "Reset password of 3 servers…").click()
    wait(d, lambda: d.current_url.endswith("/console/reset"), "the reset page")
    wait(d, lambda: d.find_elements(By.XPATH, "//summary[normalize-space(.)='3 servers selected']"),
         "3 servers selected")
    page_csp(d)

    pw1, pw2 = by_label(d, "New password"), by_label(d, "Type it again")
    assert pw1.get_attribute("type") == "password" and pw1.get_attribute("autocomplete") == "off"
    pw1.send_keys("password")
    wait(d, lambda: text(d, "#pw-msg") == (
        "The password must contain at least three of: uppercase letters, lowercase letters, "
        "digits and special characters."), "the weak password's rule")
    pw1.clear()
    pw1.send_keys(STRONG)
    pw2.send_keys(STRONG)
    wait(d, lambda: text(d, "#pw-msg") == "The password meets the rules for every selected server.",
         "the password accepted")
    assert STRONG not in d.current_url

    button(d, "Dry run").click()
    wait(d, lambda: texts(d, "#readiness tbody tr td:nth-child(2)") == ["ready"] * 3, "3 servers ready")
    by_label(d, "Restart the servers (reboot) so that the new password applies now").click()
    assert d.find_element(By.ID, "opt-restart").is_selected()
    reset = d.find_element(By.ID, "do-reset")
    wait(d, reset.is_enabled, "the reset button enabled")
    reset.click()

    wait(d, lambda: re.search(r"/console/watch#reset=[0-9a-f]{32}&job=", d.current_url), "the Watch page")
    assert STRONG not in d.current_url
    request_id = re.search(r"reset=([0-9a-f]{32})", d.current_url).group(1)
    job_id = re.search(r"job=([0-9a-f-]{36})", d.current_url).group(1)
    # The event streams (fetch + TextDecoderStream) in Firefox.
    wait(d, lambda: texts(d, "#reset-servers tbody tr td:nth-child(2)") == ["APPLIED"] * 3,
         "every server APPLIED", timeout=60)
    wait(d, lambda: text(d, "#reset-status") == "Complete: 3 applied, 0 failed of 3.", "the reset complete")
    wait(d, lambda: re.match(r"^Job SUCCESS: 3 of 3", text(d, "#job-status")), "the job SUCCESS", timeout=60)
    wait(d, lambda: request_id in text(d, "#history-resets"), "the reset in the history")
    wait(d, lambda: job_id in text(d, "#history-jobs"), "the job in the history")
    page_csp(d)

    d.find_element(By.LINK_TEXT, "Audit").click()
    wait(d, lambda: d.current_url.endswith("/console/audit"), "the audit page")
    wait(d, lambda: by_label(d, "Action"), "the audit filters")
    choose(by_label(d, "Action"), "batch-reset-password")
    button(d, "Apply filters").click()

    def audit_row():
        rows = [r for r in d.find_elements(By.CSS_SELECTOR, "#traces tbody tr") if request_id in r.text]
        return rows[0].text if len(rows) == 1 else None
    row = wait(d, audit_row, "the reset's trace")
    assert e.creds["user"] in row and "3" in row, row
    page_csp(d)

    assert d.problems == [], d.problems

    button(d, "Sign out").click()
    wait(d, lambda: d.current_url.endswith("/console/login"), "the sign-in page after sign-out")
    d.get(e.creds["console"] + "servers")
    wait(d, lambda: d.current_url.endswith("/console/login"), "signed out for good")
    # Leaving the Watch page aborted its streams: nothing failed since.
    assert [p for p in d.problems if "NS_BINDING_ABORTED" not in p and "AbortError" not in p] == [], d.problems
