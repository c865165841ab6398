"""The Dagster UI, used the way a person uses it: Debian's headless Chromium, driven by
Playwright, against a dagster-webserver this test starts on a free port, a warehouse built by
dbt and the local Stripe server.

A person looks at the lineage, previews the sync with a dry run from the Launchpad (Stripe is
untouched), materializes it (Stripe gets the customers, the page shows the counts and the
preview), and, after the data changes twice, reads the counts plotted over the runs. Then a
week of usage is billed in one run, as the demo bills it, and one day's page shows that day's
counts and what it billed.

With CENSUS_STRIPE_SCREENSHOTS=docs (`make screenshots`) the screenshots land in docs/ for the
README's tour; otherwise in the test's temporary folder.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from census_stripe.demo.local_stripe import stop_process_group
from census_stripe.demo.seed_data import USAGE_DAYS
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.settings import PROJECT_ROOT
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.conftest import API_KEY, Processes, dagster_process_env, start_on_a_free_port
from census_stripe_tests.meters import create_meter

CHROMIUM = "/usr/bin/chromium"
# Without the networking switches, Chromium keeps dialling Google from this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]
INSTANCE = (
    "telemetry:\n  enabled: false\n"
    # Runs launched from the UI start at once: the test runs the webserver alone, without the
    # daemon, so no sensor or schedule starts runs of its own behind the test's back.
    "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    "concurrency:\n  pools:\n    default_limit: 1\n"
)
SYNC_PAGE = "/assets/stripe/customers"
USAGE_PAGE = "/assets/stripe/api_usage"
# A laptop's window: the metadata must read without scrolling sideways at this width.
WIDTH = 1280
# Text is laid out in fractions of a pixel and boxes in whole ones: a line that fills its box may
# end up to a pixel past it with nothing cut (seen: text ending at 936.84 in a box ending at 936).
SUBPIXEL = 1.0
# A deadline for a UI that is broken, far beyond what a busy machine takes; never a timing.
UI_DEADLINE_SECONDS = 300


@dataclass
class Webserver:
    url: str
    warehouse: Path
    env: dict[str, str]

    def graphql(self, query: str) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]

    def runs(self) -> list[dict]:
        data = self.graphql("{ runsOrError(limit: 20) { ... on Runs { results { runId status } } } }")
        return data["runsOrError"]["results"]

    def wait_for_new_run(self, known: int, timeout: float = UI_DEADLINE_SECONDS) -> dict:
        """The run launched after `known` runs existed, once it has finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs()
            if len(runs) > known and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                return runs[0]
            time.sleep(1)
        raise TimeoutError(f"no run finished within {timeout:.0f}s: {self.runs()[:2]}")


@pytest.fixture(scope="module")
def billing():
    """The usage's Stripe Billing, as the demo has it: the Stripe double, beside localstripe's customers."""
    with StripeDoubleServer(meter_customers_elsewhere=True) as double:
        create_meter(double.url, api_key=API_KEY)
        yield double


@pytest.fixture(scope="module")
def webserver(built_warehouse, local_stripe_server, billing, tmp_path_factory):
    work = tmp_path_factory.mktemp("ui")
    warehouse = work / "warehouse.duckdb"
    shutil.copyfile(built_warehouse.path, warehouse)
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE)
    env = dagster_process_env(home, warehouse, local_stripe_server.url) | {"STRIPE_BILLING_API_BASE": billing.url}
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    processes = Processes()
    try:
        process, port = start_on_a_free_port(
            lambda port: [webserver, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            processes,
            work / "webserver.log",
            env=env,
            cwd=PROJECT_ROOT,
        )
        server = Webserver(f"http://127.0.0.1:{port}", warehouse, env)
        deadline = time.monotonic() + UI_DEADLINE_SECONDS
        while not server.graphql("{ assetNodes { id } }")["assetNodes"]:  # the code location is loading
            assert time.monotonic() < deadline, (work / "webserver.log").read_text()[-3000:]
            time.sleep(1)
        yield server
        # The webserver may ignore SIGTERM with a run in flight: stop its whole process group.
        stop_process_group(process, signal.SIGINT, grace_seconds=30)
    finally:
        processes.stop_all()


@pytest.fixture(scope="module")
def page(webserver):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
        page.set_default_timeout(UI_DEADLINE_SECONDS * 1000)
        # A browser that has seen the UI before: on a first visit, a "Join the Dagster community" dialog
        # would cover the page a second after it loads (or later, on a busy machine) until skipped.
        page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        yield page
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("CENSUS_STRIPE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def confirm_until(page: Page, done: Callable[[], bool], what: str) -> None:
    """After a click that the UI may first ask to confirm (in a dialog shown only sometimes, and
    sometimes late): Confirm whenever it is asked, until `done()` says the click took effect."""
    confirm = page.get_by_role("button", name="Confirm")
    deadline = time.monotonic() + UI_DEADLINE_SECONDS
    while not done():
        if confirm.is_visible():
            confirm.click()
        assert time.monotonic() < deadline, f"no {what} within {UI_DEADLINE_SECONDS} s"
        page.wait_for_timeout(250)


def open_page(page: Page, url: str) -> None:
    page.goto(url)


def visible_box(element: Locator) -> dict:
    """The element's box once it is laid out: the asset page re-renders its header while it loads,
    so a button found a moment ago can be detached and have no box."""
    for _ in range(50):
        element.wait_for()
        box = element.bounding_box()
        if box is not None:
            return box
        element.page.wait_for_timeout(200)
    raise AssertionError(f"{element} never got a box on the page")


def materialize_from_the_asset_page(page: Page, webserver: Webserver, launchpad_edit: str | None = None) -> dict:
    """Click Materialize (or open the Launchpad and edit the config); returns the finished run."""
    open_page(page, webserver.url + SYNC_PAGE)
    known = len(webserver.runs())
    materialize = page.get_by_role("button", name="Materialize").first
    # The models were built outside this Dagster instance, so it may ask whether to go on.
    materialize.wait_for()
    if launchpad_edit:
        box = visible_box(materialize)
        page.mouse.click(box["x"] + box["width"] + 12, box["y"] + box["height"] / 2)  # the ▾ beside it
        page.get_by_text("Open launchpad").click()
        confirm_until(page, page.locator(".CodeMirror").is_visible, "Launchpad")
    else:
        materialize.click()
        confirm_until(page, lambda: len(webserver.runs()) > known, "run launched")
    if launchpad_edit:
        old, new = launchpad_edit.split(" -> ")
        page.evaluate(
            "([before, after]) => { const editor = document.querySelector('.CodeMirror').CodeMirror;"
            " editor.setValue(editor.getValue().replace(before, after)); }",
            [old, new],
        )
        page.get_by_role("button", name="Materialize").last.click()
    return webserver.wait_for_new_run(known)


def tall_screenshot(page: Page, path: Path) -> None:
    """The page scrolls inside its own panes, so a full-page screenshot shows no more than the
    window: make the window tall instead."""
    page.set_viewport_size({"width": WIDTH, "height": 2200})
    page.wait_for_timeout(1_000)
    page.screenshot(path=path)
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def metadata_entry(page: Page, label: str) -> Locator:
    """The row of the metadata entry `label`, on the Overview or the Events tab."""
    return page.locator("tr").filter(has=page.get_by_text(label, exact=True)).first


def markdown(entry: Locator) -> Locator:
    return entry.locator(".dagster-markdown").first


def first_row_cells(entry: Locator) -> Locator:
    """The cells of the first row of a table entry."""
    return entry.locator("table tbody tr").first.locator("td")


def shown_whole(element: Locator) -> dict:
    """Where the element's text lies (its text, not its boxes, which may be wider), against what
    its scrolling boxes and the window show."""
    return element.evaluate(
        """element => {
            let left = Infinity, right = -Infinity;
            const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
            for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                const range = document.createRange();
                range.selectNodeContents(node);
                for (const line of range.getClientRects()) {
                    left = Math.min(left, line.left);
                    right = Math.max(right, line.right);
                }
            }
            let from = 0, to = window.innerWidth, scrolled = 0;
            for (let box = element.parentElement; box; box = box.parentElement) {
                if (getComputedStyle(box).overflowX === "visible") continue;
                const shown = box.getBoundingClientRect();
                from = Math.max(from, shown.left);
                to = Math.min(to, shown.right);
                scrolled += box.scrollLeft;
            }
            return {left, right, from, to, scrolled, text: element.innerText};
        }"""
    )


def assert_shown_whole(element: Locator) -> None:
    """The whole text is on screen without scrolling sideways: not cut by its box or the window."""
    element.wait_for()
    where = shown_whole(element)
    assert where["scrolled"] == 0, where
    assert where["from"] <= where["left"] + SUBPIXEL and where["right"] <= where["to"] + SUBPIXEL, where


def words(text: str) -> str:
    return " ".join(text.split())


def change_the_model(webserver: Webserver, plan: str, rows: int) -> None:
    with duckdb.connect(str(webserver.warehouse)) as connection:
        connection.execute(
            f"update main.stripe_customers set plan = '{plan}' "
            f"where external_id in (select external_id from main.stripe_customers order by external_id limit {rows})"
        )


def bill_a_week_of_usage(webserver: Webserver) -> list[str]:
    """The demo's usage sync over its days, in one run, as the demo launches it; returns the days."""
    today = utc_now().date()
    days = [str(today - timedelta(days=n)) for n in range(USAGE_DAYS, 0, -1)]
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "census_stripe.definitions"]
    command += ["--select", "stripe/api_usage", "--partition-range", f"{days[0]}...{days[-1]}"]
    done = subprocess.run(command, env=webserver.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return days


def test_a_person_previews_runs_and_reads_the_sync_in_the_ui(webserver, page, screenshots, stripe_customers):
    # The lineage: dbt's models upstream of the Stripe sync, with their kinds.
    open_page(page, webserver.url + SYNC_PAGE + "?view=lineage&lineageScope=upstream&lineageDepth=5")
    for name in ("stripe_customers", "stg_users", "raw_users", "customers"):
        page.get_by_text(name, exact=True).first.wait_for()
    page.wait_for_timeout(1_000)
    page.screenshot(path=screenshots / "asset-lineage.png")

    # A dry run from the Launchpad records the plan and writes nothing.
    run = materialize_from_the_asset_page(page, webserver, launchpad_edit="dry_run: false -> dry_run: true")
    assert run["status"] == "SUCCESS"
    assert list(stripe_customers.iter_all()) == []
    open_page(page, f"{webserver.url}/runs/{run['runId']}")
    page.get_by_text("ASSET_OBSERVATION").first.wait_for()

    # Materializing writes the customers; the Overview tab says so first, in full.
    run = materialize_from_the_asset_page(page, webserver)
    assert run["status"] == "SUCCESS"
    assert len(list(stripe_customers.iter_all())) == 294
    open_page(page, webserver.url + SYNC_PAGE)
    page.get_by_text("Created 294 Stripe customers.").wait_for()
    summary = markdown(metadata_entry(page, "summary"))
    assert_shown_whole(summary)
    assert "294 created, 0 updated" in words(summary.inner_text())
    for label in ("preview", "rejected_rows", "rows_read", "created", "rejected"):
        page.get_by_text(label, exact=True).first.wait_for()

    # A run with nothing to change says so in words.
    assert materialize_from_the_asset_page(page, webserver)["status"] == "SUCCESS"
    open_page(page, webserver.url + SYNC_PAGE)
    page.get_by_text("Nothing to change: 294 customers").first.wait_for()
    summary = markdown(metadata_entry(page, "summary"))
    assert words(summary.inner_text()).startswith("Nothing to change: 294 customers unchanged.")
    assert_shown_whole(summary)
    preview = markdown(metadata_entry(page, "preview"))
    assert words(preview.inner_text()) == "nothing to change: 294 customers unchanged"

    # Two more runs after the data changed.
    for plan, rows in (("pro", 40), ("enterprise", 90)):
        change_the_model(webserver, plan, rows)
        assert materialize_from_the_asset_page(page, webserver)["status"] == "SUCCESS"
    open_page(page, webserver.url + SYNC_PAGE)
    page.get_by_text("preview: showing 50 of").wait_for()
    summary = markdown(metadata_entry(page, "summary"))
    assert words(summary.inner_text()).startswith("Updated ")
    assert_shown_whole(summary)
    tall_screenshot(page, screenshots / "sync-summary.png")

    # The Events tab: the preview's first row shows its key, its action and a change, before →
    # after; the first rejected row its key and reason; all without scrolling sideways.
    open_page(page, webserver.url + SYNC_PAGE + "?view=events")
    first_change = first_row_cells(metadata_entry(page, "preview"))
    key, changes = first_change.nth(0), first_change.nth(1)
    changes.wait_for()
    assert "@" in key.inner_text()
    assert words(changes.inner_text()).startswith("update — metadata.plan: ")
    assert words(changes.inner_text()).endswith(" → enterprise")
    rejection = first_row_cells(metadata_entry(page, "rejected_rows"))
    rejected_key, reason = rejection.nth(0), rejection.nth(1)
    assert (rejected_key.inner_text(), reason.inner_text()) == ("not-an-email", "invalid email: 'not-an-email'")
    for cell in (key, changes, rejected_key, reason):
        assert_shown_whole(cell)
    tall_screenshot(page, screenshots / "sync-preview.png")

    # The counts plot over the runs.
    open_page(page, webserver.url + SYNC_PAGE)
    page.get_by_role("button", name="Plots").click()
    page.get_by_text("updated", exact=True).first.wait_for()
    page.get_by_text("planned_creates", exact=True).first.scroll_into_view_if_needed()
    page.wait_for_timeout(2_000)
    tall_screenshot(page, screenshots / "counts-over-runs.png")

    # A week of usage, billed in one run: a day's page has that day's own counts and what it billed,
    # the customers by units, the largest first; all without scrolling sideways.
    days = bill_a_week_of_usage(webserver)
    day = days[-2]
    open_page(page, f"{webserver.url}{USAGE_PAGE}?view=partitions&partition={day}")
    page.get_by_text(f"one of {USAGE_DAYS} in this run").first.wait_for()
    summary = markdown(metadata_entry(page, "summary"))
    said = words(summary.inner_text())
    assert f"partition {day}, one of {USAGE_DAYS} in this run" in said
    assert "100 usage rows read" in said and "billed to api_calls: " in said
    assert_shown_whole(summary)
    first_customer = first_row_cells(metadata_entry(page, "preview"))
    customer, units = first_customer.nth(0), first_customer.nth(1)
    assert "@" in customer.inner_text() and units.inner_text().replace(",", "").isdigit()
    for cell in (customer, units):
        assert_shown_whole(cell)
    tall_screenshot(page, screenshots / "usage-partition.png")
