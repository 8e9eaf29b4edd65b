"""The task view in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright,
against a real API server, scheduler, triggerer and the fal emulator.

Screenshots go to ``test-artifacts/screenshots/`` (git-ignored) for a person to look at after CI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.deployment.cluster import FAL_KEY
from tests.e2e.deployment.ui.auth import OUTSIDER
from tests.e2e.deployment.ui.conftest import REPO, UICluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install -y chromium)"),
]

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DAG_ID = "fal_view"
ALL_IMAGES_LOADED = (
    "n => document.images.length === n && "
    "[...document.images].every(img => img.complete && img.naturalWidth > 0)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def view_run(ui_cluster: UICluster) -> str:
    """A run with ``image`` finished and ``waiting`` deferred on a long fal request."""
    run_id = ui_cluster.trigger_run(DAG_ID)
    ui_cluster.wait_for_task_state(DAG_ID, run_id, "image", "success", timeout=240)
    ui_cluster.wait_for_task_state(DAG_ID, run_id, "waiting", "deferred", timeout=240)
    ui_cluster.request_of(DAG_ID, run_id, "waiting")
    return run_id


def _view_path(run_id: str, task_id: str) -> str:
    return f"/fal-view/dags/{DAG_ID}/runs/{run_id}/tasks/{task_id}?map_index=-1"


def _page(browser: Any, cluster: UICluster, username: str | None) -> Any:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    if username:
        context.add_cookies(
            [{"name": "_token", "value": cluster.token_for(username), "url": cluster.api_url}]
        )
    page = context.new_page()
    page.set_default_timeout(90_000)  # Airflow's UI bundle is large; CI machines are slow
    return page


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"screenshot artefact {path} written"


def _fal_tab(page: Any, cluster: UICluster, run_id: str, task_id: str) -> Any:
    """Open the task-instance page's "fal" tab in Airflow's UI and return the view's frame."""
    url = f"{cluster.api_url}/dags/{DAG_ID}/runs/{run_id}/tasks/{task_id}/plugin/fal"
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector('iframe[title="fal"]')
    frame = page.frame_locator('iframe[title="fal"]')
    frame.locator("#summary").wait_for()
    return frame


def test_view_of_a_deferred_task_shows_the_live_request(
    browser: Any, ui_cluster: UICluster, view_run: str
) -> None:
    page = _page(browser, ui_cluster, "admin")
    frame = _fal_tab(page, ui_cluster, view_run, "waiting")
    request_id = ui_cluster.request_of(DAG_ID, view_run, "waiting")

    sync_api.expect(frame.locator("#state")).to_have_text("deferred")
    sync_api.expect(frame.locator("#summary")).to_contain_text(request_id)
    sync_api.expect(frame.locator("#summary")).to_contain_text("emulator/echo")
    sync_api.expect(frame.locator("#live")).to_contain_text("IN_PROGRESS")
    sync_api.expect(frame.locator("#fal-logs")).to_contain_text("log line", timeout=30_000)
    # The arguments are shown as text: markup in them is not rendered.
    sync_api.expect(frame.locator("body")).to_contain_text("<b>not bold</b>")
    assert frame.locator("b").count() == 0
    _shot(page, "task-view-deferred")
    view_frame = next(f for f in page.frames if "/fal-view/" in f.url)
    assert FAL_KEY not in view_frame.content()
    page.context.close()


def test_view_of_a_finished_task_previews_its_images(
    browser: Any, ui_cluster: UICluster, view_run: str
) -> None:
    page = _page(browser, ui_cluster, "admin")
    frame = _fal_tab(page, ui_cluster, view_run, "image")
    sync_api.expect(frame.locator("#state")).to_have_text("success")
    sync_api.expect(frame.locator("#live")).to_contain_text("COMPLETED")
    view_frame = next(f for f in page.frames if "/fal-view/" in f.url)
    view_frame.wait_for_function(ALL_IMAGES_LOADED, arg=2, timeout=30_000)
    _shot(page, "task-view-finished")
    assert FAL_KEY not in view_frame.content()

    # The extra link (and the view's "Open the request") open the emulator's page for the request.
    links = ui_cluster.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{view_run}/taskInstances/image/links")
    link = links.json()["extra_links"]["fal request"]
    request_id = ui_cluster.request_of(DAG_ID, view_run, "image")
    assert link == f"{ui_cluster.emulator.url}/_emulator/requests/{request_id}/view"
    assert frame.locator("#fal-link").get_attribute("href") == link
    emulator_page = page.context.new_page()
    emulator_page.goto(link, wait_until="domcontentloaded")
    sync_api.expect(emulator_page.locator("#input")).to_contain_text("a red fox in snow")
    emulator_page.wait_for_function(ALL_IMAGES_LOADED, arg=2, timeout=30_000)
    _shot(emulator_page, "emulator-request-page")
    page.context.close()


def test_view_refuses_who_may_not_see_the_task(browser: Any, ui_cluster: UICluster, view_run: str) -> None:
    path = _view_path(view_run, "image")
    assert ui_cluster.get_as("admin", path).status_code == 200
    assert ui_cluster.get_as(None, path).status_code == 401, "no login, no view"
    refused = ui_cluster.get_as(OUTSIDER, path)
    assert refused.status_code == 403 and ui_cluster.request_of(DAG_ID, view_run, "image") not in refused.text
    ti_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{view_run}/taskInstances/image"
    assert ui_cluster.get_as(OUTSIDER, ti_path).status_code == 403, "Airflow refuses the same user the task"
    # The check is per DAG: the outsider may read the review DAG, so there it gets past the check.
    other = ui_cluster.get_as(OUTSIDER, "/fal-view/dags/example_fal_human_review/runs/none/tasks/x")
    assert other.status_code == 404

    page = _page(browser, ui_cluster, OUTSIDER)
    response = page.goto(f"{ui_cluster.api_url}{path}", wait_until="domcontentloaded")
    assert response is not None and response.status == 403
    sync_api.expect(page.locator("body")).to_contain_text("Forbidden")
    _shot(page, "task-view-refused")
    page.context.close()
