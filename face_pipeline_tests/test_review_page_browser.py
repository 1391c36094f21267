"""The review page in a real browser: Debian's chromium driven by Playwright, against the app served by
uvicorn on a free port, over lfw-mini ingested with the real default model (buffalo_s) and clustered.

Screenshots go to test-artifacts/ (gitignored). Without /usr/bin/chromium this fails when CI=true and
skips (saying why) elsewhere; install it with `apt-get install -y chromium chromium-driver`.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect

from face_pipeline.api.app import create_app
from face_pipeline.services import labels
from face_pipeline.services.library import Library
from face_pipeline.settings import Settings, load_settings
from face_pipeline_tests.browser import ARTIFACTS, free_port, launched_chromium
from face_pipeline_tests.test_api import group_faces, sqlite_library

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

API = "/api/v1"


@dataclass
class Served:
    context: Library
    url: str

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}{API}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The app served by uvicorn in a thread on a free port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(lfw_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    context = sqlite_library(tmp_path_factory, lfw_mini)
    group_faces(context)
    with serving(context.settings) as url:
        yield Served(context, url)
    context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@contextmanager
def review_page(browser: Any, url: str) -> Iterator[Any]:
    """The review page, loaded; any script error on it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    page.goto(f"{url}/")
    page.wait_for_selector("body[data-ready='true']")
    try:
        yield page
    finally:
        context.close()
    assert not script_errors, script_errors


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    with review_page(browser, served.url) as page:
        yield page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    # Thumbnails load lazily; a full-page picture should show every one of them.
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach((img) => { img.loading = 'eager'; })")
    page.evaluate(  # not wait_for_function: that evaluates strings in the page, which its CSP forbids
        "Promise.all([...document.images].map((img) => img.complete ? null"
        " : new Promise((done) => { img.onload = img.onerror = done; })))"
    )
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def first_group(page: Any) -> tuple[Any, str, int]:
    card = page.locator("article.cluster").first
    cluster_id = card.get_attribute("data-cluster-id")
    size = int(card.locator("h3").inner_text().split()[0])
    return card, cluster_id, size


def test_naming_a_group_from_the_keyboard_adds_the_person(page: Any, served: Served):
    shot(page, "review-01-groups.png")
    groups = page.locator("article.cluster")
    assert groups.count() >= 5
    sizes = [int(text.split()[0]) for text in groups.locator("h3").all_inner_texts()]
    assert sizes == sorted(sizes, reverse=True)
    card, cluster_id, size = first_group(page)
    assert card.locator("img").count() == size

    # Tab through real controls to the group's name field; focus must be visible there.
    for _ in range(200):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == f"name-{cluster_id}":
            break
    else:
        pytest.fail("the name field cannot be reached with Tab")
    assert page.evaluate("document.activeElement.matches(':focus-visible')")
    page.keyboard.type("Grace Hopper")
    page.keyboard.press("Enter")

    person = page.locator("#people li", has_text="Grace Hopper")
    person.wait_for()
    expect(person.locator(".count")).to_have_text(f"{size} faces")
    expect(page.locator(f"article[data-cluster-id='{cluster_id}']")).to_have_count(0)
    expect(page.locator("#status")).to_contain_text("Named")
    shot(page, "review-02-named.png")

    people = served.api("GET", "/persons")["items"]
    grace = next(p for p in people if p["name"] == "Grace Hopper")
    assert grace["face_count"] == grace["confirmed_count"] == size


def test_a_group_that_changed_behind_the_page_is_reloaded_with_an_inline_message(page: Any, served: Served):
    card, cluster_id, size = first_group(page)
    faces = served.api("GET", f"/faces/clusters/{cluster_id}", params={"limit": 500})["faces"]["items"]
    labels.remove_from_cluster(served.context, faces[-1]["face_id"])  # another reviewer, or a run

    card.locator("input").fill("Ada Lovelace")
    card.locator("input").press("Enter")
    fresh = page.locator(f"article[data-cluster-id='{cluster_id}']")
    error = fresh.locator(".form-error")
    error.wait_for()
    expect(error).to_contain_text("changed")
    expect(fresh.locator("h3")).to_have_text(re.compile(rf"^{size - 1} faces"))
    assert page.evaluate("document.activeElement.value") == "Ada Lovelace"
    shot(page, "review-03-stale-group.png")

    page.keyboard.press("Enter")  # the reloaded group, as shown now
    page.locator("#people li", has_text="Ada Lovelace").wait_for()
    ada = next(p for p in served.api("GET", "/persons")["items"] if p["name"] == "Ada Lovelace")
    assert ada["face_count"] == size - 1


def test_removing_a_face_and_merging_two_people(page: Any, served: Served):
    card, cluster_id, size = first_group(page)
    card.locator(".faces button").first.click()
    page.locator(f"article[data-cluster-id='{cluster_id}'] h3", has_text=f"{size - 1} faces").wait_for()
    expect(page.locator("#status")).to_contain_text("removed")
    assert served.api("GET", f"/faces/clusters/{cluster_id}")["size"] == size - 1

    # Two names for one person: merge them on the page.
    for name in ("Merge Source", "Merge Target"):
        cluster = served.api("GET", "/faces/clusters", params={"type": "unknown", "limit": 1})["items"][0]
        served.api("POST", f"/faces/clusters/{cluster['cluster_id']}/label", json={"name": name})
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    people = {p["name"]: p for p in served.api("GET", "/persons")["items"]}
    source, target = people["Merge Source"], people["Merge Target"]

    page.select_option("#merge-source", source["person_id"])
    page.select_option("#merge-target", source["person_id"])
    page.locator("#merge-form button").click()
    expect(page.locator("#merge-form .form-error")).to_contain_text("two different people")  # shown inline

    page.select_option("#merge-target", target["person_id"])
    page.locator("#merge-form button").click()
    merged = page.locator("#people li", has_text="Merge Target")
    merged.locator(".count", has_text=f"{source['face_count'] + target['face_count']} faces").wait_for()
    expect(page.locator("#people li", has_text="Merge Source")).to_have_count(0)
    shot(page, "review-04-merged.png")


def test_a_persons_suggestions_and_faces_can_be_confirmed_and_rejected(page: Any, served: Served):
    cluster = served.api("GET", "/faces/clusters", params={"type": "unknown", "limit": 1})["items"][0]
    faces = served.api("GET", f"/faces/clusters/{cluster['cluster_id']}", params={"limit": 500})["faces"]["items"]
    held_back = faces[-1]["face_id"]
    served.api("POST", f"/faces/{held_back}/remove-from-cluster")
    served.api("POST", f"/faces/clusters/{cluster['cluster_id']}/label", json={"name": "Hedy Lamarr"})
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    hedy = page.locator("#people li", has_text="Hedy Lamarr")
    expect(hedy.locator(".count")).to_have_text(f"{cluster['size'] - 1} faces")

    page.get_by_role("button", name="Faces that may be Hedy Lamarr").click()
    first = page.locator("#person-detail li").first
    first.wait_for()
    expect(first.locator("img")).to_have_attribute("src", f"{API}/faces/{held_back}/thumbnail")  # best match
    shot(page, "review-06-suggestions.png")
    first.get_by_role("button", name="Yes, Hedy Lamarr").click()
    hedy.locator(".count", has_text=f"{cluster['size']} faces").wait_for()

    page.get_by_role("button", name="Show the faces of Hedy Lamarr").click()
    page.get_by_role("button", name="Face 1 is not Hedy Lamarr").click()
    hedy.locator(".count", has_text=f"{cluster['size'] - 1} faces").wait_for()
    # The people list and the open person re-render separately: expect() waits for both.
    expect(page.locator("#person-detail h3")).to_have_text(f"Hedy Lamarr: {cluster['size'] - 1} faces")


def test_with_a_token_set_the_page_asks_for_it_and_then_saves(browser: Any, served: Served):
    settings = load_settings(**{**served.context.settings.model_dump(), "api_token": "page-token"})
    with serving(settings) as url, review_page(browser, url) as page:  # reads stay open: the page loads
        card, cluster_id, size = first_group(page)
        card.locator("input").fill("Katherine Johnson")
        card.locator("input").press("Enter")
        error = card.locator(".form-error")
        error.wait_for()
        expect(error).to_contain_text("Bearer")
        expect(page.locator("#token-form")).to_be_visible()
        page.locator("#token").fill("page-token")
        page.locator("#token").press("Enter")
        expect(page.locator("#token-form")).to_be_hidden()
        shot(page, "review-05-token.png")
        card.locator("input").press("Enter")
        page.locator("#people li", has_text="Katherine Johnson").wait_for()
    assert httpx.get(f"{served.url}{API}/faces/clusters/{cluster_id}").status_code == 404  # named: gone


def test_the_seeds_curl_line_against_the_served_app(served: Served):
    clusters = served.api("GET", "/faces/clusters", params={"type": "unknown", "limit": 500})["items"]
    ids = [c["cluster_id"] for c in clusters]
    cluster_id = "unknown_cluster_5" if "unknown_cluster_5" in ids else ids[0]
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            f"{served.url}{API}/faces/clusters/{cluster_id}/label",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"name": "Alice Johnson"}',
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "200", body
    assert '"person_name":"Alice Johnson"' in body
