"""The web console end to end in headless chromium (issue #14): a newcomer's
path through the real `ecsd serve --dev` — sign in as the dev user, filter,
select the Linux servers, see a weak password's broken rule, dry run, reset
with restart, watch every server reach APPLIED, find the call in the audit
view, sign out — then a read-only user refused, and a forged cross-site POST
rejected. Writes the screenshots shown in the README to docs/console/."""

import http.server
import re
import threading

from playwright.sync_api import expect

STRONG = "Fleet-Reset-42x"


def sign_in(page, ecsd, user, password):
    page.goto(ecsd.creds["console"])
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.get_by_label("Domain").fill(ecsd.creds["domain"])
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_label("Project (name or id)").fill("dev")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/servers$"))
    expect(page.get_by_role("heading", name="Servers")).to_be_visible()


def select_linux(page):
    page.get_by_label("OS").select_option("Linux")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#servers-summary")).to_have_text(re.compile(r"^3 servers match"))
    expect(page.locator("#servers tbody tr")).to_have_count(3)
    # Keyboard: the header checkbox selects the page.
    page.get_by_label("Select every server on this page").focus()
    page.keyboard.press("Space")
    expect(page.locator("#selection-count")).to_have_text("3 selected.")


def test_the_dev_user_resets_and_restarts_the_linux_servers_watching_each(page, ecsd, shots):
    banner = "".join(ecsd.banner)
    assert f"web console: {ecsd.creds['console']}" in banner, banner
    assert ecsd.creds["console"].endswith("/console/")

    page.goto(ecsd.creds["console"])
    page.screenshot(path=str(shots / "login.png"))
    # A wrong password: refused in the page, no session.
    page.get_by_label("Domain").fill(ecsd.creds["domain"])
    page.get_by_label("User name").fill(ecsd.creds["user"])
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_label("Project (name or id)").fill("dev")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The domain, user name, password or project is wrong.")

    sign_in(page, ecsd, ecsd.creds["user"], ecsd.creds["password"])
    cookies = page.context.cookies()
    session = [c for c in cookies if c["name"] == "__Host-ecsd-session"]
    assert session and session[0]["httpOnly"] and session[0]["secure"]
    assert session[0]["sameSite"] == "Strict"
    # The session never reaches script: document.cookie does not show it.
    assert "__Host-ecsd-session" not in page.evaluate("document.cookie")
    expect(page.locator("#servers tbody tr")).to_have_count(4)
    page.screenshot(path=str(shots / "servers.png"))

    select_linux(page)
    page.get_by_role("button", name="Reset password of 3 servers…").click()
    expect(page).to_have_url(re.compile(r"/console/reset$"))
    expect(page.get_by_text("3 servers selected")).to_be_visible()

    pw1 = page.get_by_label("New password", exact=True)
    pw2 = page.get_by_label("Type it again")
    assert pw1.get_attribute("autocomplete") == "off"
    assert pw1.get_attribute("type") == "password"
    # A weak password: the server's own rule and message, as typed.
    pw1.press_sequentially("password", delay=20)
    expect(page.locator("#pw-msg")).to_have_text(
        "The password must contain at least three of: uppercase letters, lowercase letters, "
        "digits and special characters.")
    page.screenshot(path=str(shots / "reset-weak-password.png"))
    pw1.fill(STRONG)
    pw2.fill(STRONG[:-1] + "y")
    expect(page.locator("#pw-msg")).to_have_text("The two passwords differ.")
    pw2.fill(STRONG)
    expect(page.locator("#pw-msg")).to_have_text("The password meets the rules for every selected server.")
    assert STRONG not in page.url

    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#readiness tbody tr")).to_have_count(3)
    expect(page.locator("#readiness tbody tr td:nth-child(2)")).to_have_text(["ready"] * 3)
    page.get_by_label("Restart the servers (reboot) so that the new password applies now").check()
    page.screenshot(path=str(shots / "reset.png"), full_page=True)

    page.get_by_role("button", name="Reset password").click()
    expect(page).to_have_url(re.compile(r"/console/watch#reset=[0-9a-f]{32}&job="))
    assert STRONG not in page.url
    request_id = re.search(r"reset=([0-9a-f]{32})", page.url).group(1)
    expect(page.locator("#reset-servers tbody tr")).to_have_count(3, timeout=15000)
    expect(page.locator("#reset-servers tbody tr td:nth-child(2)")).to_have_text(["APPLIED"] * 3, timeout=60000)
    expect(page.locator("#reset-status")).to_have_text("Complete: 3 applied, 0 failed of 3.")
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^Job SUCCESS: 3 of 3"), timeout=60000)
    expect(page.locator("#history-resets")).to_contain_text(request_id)
    job_id = re.search(r"job=([0-9a-f-]{36})", page.url).group(1)
    expect(page.locator("#history-jobs")).to_contain_text(job_id)
    assert page.locator("#reset-progress").evaluate("e => e.value") == 3
    page.screenshot(path=str(shots / "watch.png"), full_page=True)

    page.get_by_role("link", name="Audit").click()
    page.get_by_label("Action").select_option("batch-reset-password")
    page.get_by_role("button", name="Apply filters").click()
    row = page.locator("#traces tbody tr", has_text=request_id)
    expect(row).to_have_count(1)
    expect(row).to_contain_text(ecsd.creds["user"])
    expect(row).to_contain_text("3")
    page.screenshot(path=str(shots / "audit.png"), full_page=True)

    # No inline script or style was refused by the CSP, no script failed.
    assert console_problems(page) == [], page.problems

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.goto(ecsd.creds["console"] + "servers")
    expect(page).to_have_url(re.compile(r"/console/login$"))


def test_a_user_whose_policy_forbids_resets_sees_the_reset_refused(page, ecsd):
    ecsd.admin("user", "create", "--domain", ecsd.creds["domain"], "--name", "viewer", "--role", "readonly",
               "--project", ecsd.creds["project_id"], "--password-stdin", stdin=b"Viewer-Pass-77")
    sign_in(page, ecsd, "viewer", "Viewer-Pass-77")
    page.get_by_label("OS").select_option("Linux")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#servers-summary")).to_have_text(re.compile(r"^3 servers match"))
    # "All that match the filter": the reset page resolves the ids by marker paging.
    page.get_by_role("button", name="Select all 3 matching the filter").click()
    expect(page.locator("#selection-count")).to_have_text("All 3 servers matching the filter are selected.")
    page.get_by_role("button", name="Reset password of 3 servers…").click()
    expect(page.get_by_text("3 servers selected")).to_be_visible()
    page.get_by_label("New password", exact=True).fill(STRONG)
    page.get_by_label("Type it again").fill(STRONG)
    expect(page.locator("#pw-msg")).to_contain_text("APIGW.0302")
    expect(page.get_by_role("button", name="Reset password")).to_be_disabled()
    page.get_by_role("button", name="Dry run").click()
    alert = page.locator("#reset-result [role=alert]")
    expect(alert).to_contain_text("APIGW.0302: The IAM user is not authorized to access the API")
    expect(alert).to_contain_text(re.compile(r"Request id [0-9a-f]{32}"))
    refused_id = re.search(r"Request id ([0-9a-f]{32})", alert.inner_text()).group(1)
    # The refusal is in the audit trail, as the API call it was.
    page.get_by_role("link", name="Audit").click()
    page.get_by_label("Action").select_option("ecs:cloudServers:resetServerPwd")
    page.get_by_role("button", name="Apply filters").click()
    row = page.locator("#traces tbody tr", has_text=refused_id)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("viewer")
    expect(row).to_contain_text("denied")


def test_a_forged_cross_site_post_is_rejected(page, ecsd):
    sign_in(page, ecsd, ecsd.creds["user"], ecsd.creds["password"])
    target = ecsd.creds["endpoint"] + f"/v1/{ecsd.creds['project_id']}/cloudservers/action"
    # The Windows server: the first test restarted only the Linux ones.
    victim = [s["id"] for s in ecsd.creds["servers"] if s["os_type"] == "Windows"][0]
    attack = (
        "<!doctype html><form id=f method=post enctype=text/plain action='" + target + "'>"
        "<input name='{\"reboot\":{\"type\":\"HARD\",\"servers\":[{\"id\":\"" + victim + "\"}],\"x\":\"' "
        "value='\"}}'></form><script>document.getElementById('f').submit()</script>").encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(attack)

        def log_message(self, *args):
            pass

    evil = http.server.HTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        # Another site (localhost is not 127.0.0.1) posts to ecsd in the
        # signed-in browser: the API refuses it with its error body.
        page.goto(f"http://localhost:{evil.server_port}/")
        page.wait_for_url(target)
        body = page.locator("body").inner_text()
        assert re.search(r'"error_code":\s*"APIGW\.030[12]"', body), body
        assert re.search(r'"request_id":\s*"[0-9a-f]{32}"', body), body
    finally:
        evil.shutdown()
    # Nothing was restarted: the audit view lists no accepted action.
    page.goto(ecsd.creds["console"] + "audit")
    page.get_by_label("Action").select_option("reboot-servers")
    page.get_by_label("Server id").fill(victim)
    page.get_by_label("Outcome").select_option("success")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#traces tbody")).to_contain_text("No trace matches.")


def console_problems(page):
    """What chromium complained about on the console's own pages, less the
    expected refusals (401/403 answers the tests provoke)."""
    return [p for p in page.problems
            if "Failed to load resource" not in p]


def test_pages_are_readable_at_200_percent_zoom_and_follow_a_dark_system_theme(browser, ecsd, shots):
    from conftest import watched_page
    # 200% zoom: half the CSS width of the window above, at twice the pixels.
    ctx, page = watched_page(browser, viewport={"width": 640, "height": 430}, device_scale_factor=2,
                             color_scheme="dark")
    try:
        sign_in(page, ecsd, ecsd.creds["user"], ecsd.creds["password"])
        expect(page.locator("#servers tbody tr")).to_have_count(4)
        for path in ["servers", "watch", "audit"]:
            page.goto(ecsd.creds["console"] + path)
            page.wait_for_load_state("networkidle")
            # Nothing but the tables' own scroll boxes is wider than the window.
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path}: {overflow}px wider than the window at 200%"
        page.goto(ecsd.creds["console"] + "servers")
        expect(page.locator("#servers tbody tr")).to_have_count(4)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)", background
        page.screenshot(path=str(shots / "servers-dark-200-percent.png"))
        assert console_problems(page) == [], page.problems
    finally:
        ctx.close()


def test_no_password_reached_the_log(ecsd):
    """Runs after the others: ecsd's debug log holds none of the passwords the
    browser typed (the new server password, the users' sign-in passwords)."""
    log = ecsd.log_path.read_text()
    assert "console-sign-in" in log or "console session started" in log
    for secret in [STRONG, ecsd.creds["password"], "Viewer-Pass-77"]:
        assert secret not in log



def test_the_servers_table_pages_by_marker_and_selects_all_that_match_across_pages(page, tmp_path):
    """More servers than a page (50): Next and Previous follow the API's
    markers, and "all that match" covers every page, not only the one shown."""
    from conftest import Ecsd

    big = Ecsd(tmp_path / "data", linux=57, windows=0)
    try:
        sign_in(page, big, big.creds["user"], big.creds["password"])
        summary = page.locator("#servers-summary")
        rows = page.locator("#servers tbody tr")
        expect(summary).to_have_text(re.compile(r"^57 servers match; showing 1–50\."))
        expect(rows).to_have_count(50)
        first_page = rows.all_inner_texts()
        prev, nxt = (page.get_by_role("button", name=n) for n in ("Previous page", "Next page"))
        expect(prev).to_be_disabled()
        nxt.click()
        expect(summary).to_have_text(re.compile(r"^57 servers match; showing 51–57\."))
        expect(rows).to_have_count(7)
        second_page = rows.all_inner_texts()
        assert not set(first_page) & set(second_page), "a server on both pages"
        expect(nxt).to_be_disabled()
        prev.click()
        expect(summary).to_have_text(re.compile(r"^57 servers match; showing 1–50\."))
        assert rows.all_inner_texts() == first_page
        page.get_by_role("button", name="Select all 57 matching the filter").click()
        expect(page.locator("#selection-count")).to_have_text(
            "All 57 servers matching the filter are selected.")
        page.get_by_role("button", name="Reset password of 57 servers…").click()
        expect(page.get_by_text("57 servers selected")).to_be_visible()
    finally:
        big.stop()
