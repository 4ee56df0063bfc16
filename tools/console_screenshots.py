"""Screenshots of the console's main pages for the README and docs/console.md.

Generates the demo organisation (`exfilwatch demo`), adds an admin, serves it with `exfilwatch
ui` on 127.0.0.1, triages one incident, and photographs the pages in Debian's Chromium through
Playwright (the same browser setup as tests/test_console_browser.py).

    python tools/console_screenshots.py [--out docs/console]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PASSWORD = "screenshots only"


def command(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home", str(home), *args]


ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        demo = Path(work) / "demo"
        subprocess.run([sys.executable, "-c", "from exfilwatch.cli import app; app()", "demo", "--out", str(demo),
                        "--hosts", "30", "--days", "28"], env=ENV,
                       check=False, capture_output=True)
        home = demo / "home"
        subprocess.run(command(home, "users", "add", "alice", "--role", "admin", "--password-stdin"), env=ENV,
                       text=True, input=PASSWORD + "\n", check=True, capture_output=True)
        server = subprocess.Popen(command(home, "ui", "--host", "127.0.0.1", "--port", "0"), env=ENV, text=True,
                                  stderr=subprocess.PIPE)
        try:
            url = re.search(r"(http://127\.0\.0\.1:\d+)/", server.stderr.readline()).group(1)
            shoot(url, out)
        finally:
            server.terminate()
            server.wait(timeout=30)


def shoot(url: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/login")
        page.screenshot(path=str(out / "login.png"))
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/incidents")
        page.screenshot(path=str(out / "incidents.png"), full_page=True)
        user_rows = page.locator("tr[data-incident]", has_text="user")
        user_rows.first.locator("a").first.click()
        page.fill("#workflow input[name=assignee]", "alice")
        page.click("#workflow button:has-text('Assign')")
        expect(page.locator('[data-testid="assignee"]')).to_have_text("alice")
        page.fill("#workflow textarea[name=text]", "Recipients are the user's own address; asking the manager.")
        page.click("#workflow button:has-text('Comment')")
        expect(page.locator("#workflow .card .raw")).to_have_count(1)
        page.screenshot(path=str(out / "incident.png"), full_page=True)
        page.click('[data-testid="entity-link"]')
        expect(page.locator("[data-vega-spec]:not([data-chart-ready])")).to_have_count(0)
        page.screenshot(path=str(out / "entity.png"), full_page=False)
        for name, path in (("findings", "/findings"), ("detections", "/detections"),
                           ("detection", "/detections/em_bsum_personal"), ("suppressions", "/suppressions"),
                           ("sources", "/sources")):
            page.goto(url + path)
            expect(page.locator("[data-vega-spec]:not([data-chart-ready])")).to_have_count(0)
            page.screenshot(path=str(out / f"{name}.png"), full_page=name not in ("findings", "sources"))
        browser.close()


if __name__ == "__main__":
    main()
