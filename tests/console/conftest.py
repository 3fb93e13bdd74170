"""Fixtures of the console's browser suite: the real `ecsd serve --dev` (its
simulated fleet runs the real agent code) and Debian's chromium driven by
Playwright (no browser download: executable_path is the system's)."""

import json
import os
import pathlib
import subprocess
import time

import pytest
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / os.environ.get("ECS_PROFILE", "debug")
ECSD = os.environ.get("ECSD_BIN", str(TARGET / "ecsd"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "docs" / "console"


class Ecsd:
    """`ecsd serve --dev` on a free port with its own data directory."""

    def __init__(self, data_dir, linux=3, windows=1):
        self.data_dir = pathlib.Path(data_dir)
        self.log_path = self.data_dir.parent / "ecsd.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [ECSD, "--data-dir", str(self.data_dir), "serve", "--dev", "--listen", "127.0.0.1:0",
             "--dev-linux", str(linux), "--dev-windows", str(windows)],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="debug"))
        self.banner = []
        cred_path = None
        deadline = time.time() + 60
        while time.time() < deadline and cred_path is None:
            line = self.proc.stdout.readline().decode()
            if not line:
                raise RuntimeError("ecsd exited: " + self.log_path.read_text()[-2000:])
            self.banner.append(line)
            if line.startswith("credentials: "):
                cred_path = line.split(": ", 1)[1].strip()
        assert cred_path, "ecsd did not print its credentials file"
        # The rest of the banner (the console's line comes after it).
        for _ in range(3):
            self.banner.append(self.proc.stdout.readline().decode())
        self.creds = json.loads(pathlib.Path(cred_path).read_text())

    def admin(self, *args, stdin=None):
        out = subprocess.run([ECSD, "--data-dir", str(self.data_dir), "admin", *args], check=True,
                             capture_output=True, input=stdin)
        return out.stdout

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def ecsd(tmp_path_factory):
    e = Ecsd(tmp_path_factory.mktemp("console") / "data")
    yield e
    e.stop()


@pytest.fixture(scope="session")
def browser():
    assert pathlib.Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def watched_page(browser, **options):
    """A page in a new context; every console message and page error is kept in
    `page.problems` (a CSP refusal of an inline script or style shows there)."""
    # The dev CA is not in chromium's store: its certificate errors are
    # ignored (the Rust and SDK suites verify the dev CA itself).
    ctx = browser.new_context(ignore_https_errors=True, **options)
    pg = ctx.new_page()
    pg.problems = []
    pg.on("console", lambda m: m.type in ("error", "warning") and pg.problems.append(m.text))
    pg.on("pageerror", lambda e: pg.problems.append(str(e)))
    return ctx, pg


@pytest.fixture
def page(browser):
    ctx, pg = watched_page(browser, viewport={"width": 1280, "height": 860})
    yield pg
    ctx.close()


@pytest.fixture(scope="session")
def shots():
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS
