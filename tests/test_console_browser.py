"""The console in a real headless Chromium (Debian's `chromium`, driven by Playwright) against
`exfilwatch ui` serving a generated organisation on 127.0.0.1: an analyst triages an incident
end to end, the entity charts render, and hostile strings injected through real log lines
never run as script on any page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .consolekit import HOSTILE_USER, PASSWORD, XSS, console_home_copy
from exfilwatch.home import open_state
from exfilwatch.incidents import workflow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def org(tmp_path_factory):
    return console_home_copy(tmp_path_factory.getbasetemp() / "console-org", tmp_path_factory.mktemp("browser") / "home")


@pytest.fixture(scope="module")
def url(org):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-c", "from exfilwatch.cli import app; app()", "--home",
                                str(org.home.root), "ui", "--host", "127.0.0.1", "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        yield match.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def new_page(browser, url: str, role: str):  # noqa: ANN001, ANN201
    """A logged-in page on which any JavaScript dialog, page error or CSP violation fails the test."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    problems: list[str] = []
    page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" and "favicon" not in (msg.location or {}).get("url", "") else None)
    page.goto(f"{url}/login")
    page.fill("input[name=name]", role)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/incidents")
    page.problems = problems  # type: ignore[attr-defined]
    return page


def charts_ready(page) -> None:  # noqa: ANN001
    # locators, not page.wait_for_function: the page's CSP forbids the eval that one needs
    expect(page.locator("[data-vega-spec]:not([data-chart-ready])")).to_have_count(0)
    assert page.locator("[data-chart-error]").count() == 0


def leak_incident(org) -> dict:  # noqa: ANN001
    state = open_state(org.home)
    try:
        return next(i for i in workflow.list_incidents(state) if i["risk_object_type"] == "user"
                    and any(e["detection_id"] == "em_bsum_personal"
                            for e in workflow.get_incident(state, i["incident_id"])["risk_events"]))
    finally:
        state.close()


def test_analyst_triages_an_incident_end_to_end(browser, url, org):
    incident = leak_incident(org)
    page = new_page(browser, url, "analyst")
    row = page.locator(f"tr[data-incident='{incident['incident_id']}']")
    assert row.count() == 1
    page.locator('[data-testid="severity-counts"]').wait_for()
    row.locator("a").first.click()
    page.wait_for_url(f"**/incidents/{incident['incident_id']}")
    page.fill("#workflow input[name=assignee]", "analyst")
    page.click("#workflow button:has-text('Assign')")
    expect(page.locator('[data-testid="assignee"]')).to_have_text("analyst")
    page.select_option("#workflow select[name=status]", "closed")
    page.select_option("#workflow select[name=disposition]", "false_positive")
    page.click("#workflow button:has-text('Set status')")
    offer = page.locator('[data-testid="suggested-suppression"]')
    offer.wait_for()
    assert "false positive" in page.locator('[data-testid="status"]').inner_text()
    assert page.locator('[data-testid="audit"] tbody tr').count() >= 2
    reason = offer.locator("input[name=reason]").input_value()
    offer.locator("button[type=submit]").click()
    page.wait_for_url("**/suppressions")
    added = page.locator('[data-testid="suppressions"] tr', has_text=reason)
    assert added.count() == 1 and "active" in added.inner_text() and "analyst" in added.inner_text()
    assert page.problems == []


def test_entity_charts_render_with_the_flagged_session(browser, url, org):
    incident = leak_incident(org)
    page = new_page(browser, url, "viewer")
    page.goto(f"{url}/entity/{incident['risk_object']}")
    charts_ready(page)
    for chart in ("em_fnum", "em_dnum", "em_bsum", "em_bsum_personal", "risk"):
        marks = page.locator(f"[data-chart='{chart}'] svg .mark-symbol path, [data-chart='{chart}'] svg .mark-line path")
        assert marks.count() > 0, chart
    flagged = page.locator("[data-chart='em_bsum_personal'] svg .mark-symbol path[fill='#d62728']")
    assert flagged.count() >= 1  # the leak session, in red
    assert page.locator("[data-chart='em_bsum_personal'] svg .mark-rule path, "
                        "[data-chart='em_bsum_personal'] svg .mark-rule line").count() >= 1  # median / threshold
    assert page.problems == []


def test_no_page_runs_script_from_hostile_log_lines(browser, url, org):
    page = new_page(browser, url, "admin")
    state = open_state(org.home)
    incidents = workflow.list_incidents(state)
    state.close()
    urls = ["/incidents", "/findings", "/findings?show=suppressed", "/detections", "/detections/em_bsum_personal",
            "/suppressions", "/sources", "/users", f"/entity/{HOSTILE_USER}"]
    urls += [f"/incidents/{i['incident_id']}" for i in incidents]
    urls += sorted({f"/entity/{i['risk_object']}" for i in incidents})
    shown = 0
    for path in urls:
        page.goto(url + path.replace("`", "%60"))
        page.wait_for_load_state("load")
        charts_ready(page)
        assert page.locator("[onerror], [onload], [onmouseover], a[href^='javascript:'], img[src='x']").count() == 0, path
        text = page.inner_text("body")
        shown += sum(payload in text for payload in XSS)
    assert shown > len(XSS)  # the payloads are on the pages, as text
    page.goto(f"{url}/sources")
    assert page.locator("td.raw", has_text="<script>alert(1)</script>").count() >= 1
    charts_ready(page)  # lines received, written, skipped and quarantined per receiver, drawn
    assert page.locator("[data-chart='lines-received'] svg .mark-line path").count() >= 4
    assert page.problems == []


def test_the_api_page_works_offline_under_the_consoles_policy(browser, url):
    """/docs draws the OpenAPI description with the vendored Swagger UI: no CDN, no inline script,
    and a logged-in viewer can call the API from it."""
    page = new_page(browser, url, "viewer")
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{url}/docs")
    operation = page.locator(".opblock-summary-path", has_text="/api/incidents").first
    operation.wait_for()
    operation.click()
    page.click("button.try-out__btn")
    page.click("button.execute")
    expect(page.locator(".live-responses-table tr.response td.response-col_status").first).to_have_text("200")
    assert all(address.startswith(url) for address in requested), requested
    assert page.problems == []
