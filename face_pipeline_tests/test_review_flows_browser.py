"""Issue 15's review flows in a real browser (Debian's chromium through Playwright) on lfw-mini ingested with the
real default model and grouped: suggestions with scores above the floor, "No", naming a face on its own, a
person's photo with the box, undo restoring the export exactly, ignore surviving the next cluster-dual.
Screenshots: test-artifacts/review-flow-*.png (printed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from face_pipeline.services.export import faces_frame
from face_pipeline.storage.models import FaceInstance, Image
from face_pipeline_tests.browser import ARTIFACTS
from face_pipeline_tests.test_api import group_faces
from face_pipeline_tests.test_review_page_browser import Served, review_page, shot
from face_pipeline_tests.test_review_page_browser import browser as browser  # noqa: F401 (the fixture)
from face_pipeline_tests.test_review_page_browser import served as served  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
FLOOR = 0.45  # buffalo_s's person threshold


def step(page: Any, name: str) -> None:
    shot(page, name)
    print("screenshot:", ARTIFACTS / name)


def named_with_held_back(served: Served, name: str) -> tuple[str, list[int]]:
    clusters = served.api("GET", "/faces/clusters", params={"type": "unknown", "limit": 500})["items"]
    cluster = next(c for c in clusters if c["size"] >= 5)
    faces = served.api("GET", f"/faces/clusters/{cluster['cluster_id']}", params={"limit": 500})["faces"]["items"]
    folders = {f["face_id"]: f["image_id"] for f in faces}
    with served.context.db.session() as session:
        paths = dict(session.execute(select(Image.id, Image.path)).tuples().all())
    person_of = {f: Path(paths[i]).parent.name for f, i in folders.items()}
    main = Counter(person_of.values()).most_common(1)[0][0]
    held = [f for f, p in person_of.items() if p == main][-2:]
    for face_id in held:
        served.api("POST", f"/faces/{face_id}/remove-from-cluster")
    person = served.api("POST", f"/faces/clusters/{cluster['cluster_id']}/label", json={"name": name})["person_id"]
    return person, held


def test_suggestions_no_singletons_photo_undo_and_ignore_in_the_browser(browser: Any, served: Served):  # noqa: F811
    person, held = named_with_held_back(served, "Rosa Review")
    with review_page(browser, served.url) as page:
        step(page, "review-flow-01-start.png")

        # Suggestions: every one shows its score, none under the floor; "No" rules the face out for good.
        page.get_by_role("button", name="Faces that may be Rosa Review").click()
        cards = page.locator("#suggestions > li")
        cards.first.wait_for()
        scores = [float(t) for t in page.locator("#suggestions .score").all_inner_texts()]
        assert scores and scores == sorted(scores, reverse=True) and min(scores) >= FLOOR
        expect(page.locator("#suggestion-info")).to_contain_text(f"at least {FLOOR:.2f}")
        expect(page.locator("#accept-all")).to_contain_text("Accept")
        step(page, "review-flow-02-suggestions.png")
        refused = int(cards.first.get_attribute("data-face-id"))
        cards.first.get_by_role("button", name="Suggestion 1 is not Rosa Review").click()
        expect(page.locator(f"#suggestions > li[data-face-id='{refused}']")).to_have_count(0)
        expect(page.locator("#status")).to_contain_text("not Rosa Review")
        again = served.api("GET", f"/persons/{person}/suggestions", params={"limit": 200})["items"]
        assert refused not in {s["face"]["face_id"] for s in again}
        page.get_by_role("button", name="Faces that may be Rosa Review").click()
        page.locator("#suggestions").wait_for()
        assert page.locator(f"#suggestions > li[data-face-id='{refused}']").count() == 0
        step(page, "review-flow-03-after-no.png")

        # A face on its own, named from the page.
        single = page.locator("#singletons > li").first
        face_id = int(single.get_attribute("data-face-id"))
        single.locator("input").fill("Sol Single")
        single.locator("input").press("Enter")
        page.locator("#people li", has_text="Sol Single").wait_for()
        expect(page.locator(f"#singletons > li[data-face-id='{face_id}']")).to_have_count(0)
        step(page, "review-flow-04-singleton-named.png")

        # Rosa's page: the photo her face comes from, with the face's box over it.
        page.get_by_role("button", name="Show the faces of Rosa Review").click()
        figure = page.locator("#person-photos figure").first
        figure.locator("img").wait_for()
        box = figure.locator(".box").first
        face = served.api("GET", f"/faces/clusters/person_{person}", params={"limit": 500})["faces"]["items"]
        shown = next(f for f in face if f["face_id"] == int(box.get_attribute("data-face-id")))
        step(page, "review-flow-05-person-photos.png")
        img_box, face_box = figure.locator("img").bounding_box(), box.bounding_box()
        scale = img_box["width"] / shown["photo_width"]
        assert face_box["x"] - img_box["x"] == pytest.approx(shown["bbox"]["x"] * scale, abs=2)
        assert face_box["width"] == pytest.approx(shown["bbox"]["w"] * scale, abs=2)

        # Undo: the last decisions taken back one by one; the export is as before, exactly.
        before = faces_frame(served.context.db)
        target = page.locator("#person-faces li").first
        target.get_by_role("checkbox").check()
        page.locator("#split-name").fill("Stan Split")
        page.locator("#split-form button").click()
        page.locator("#people li", has_text="Stan Split").wait_for()
        expect(page.locator("#last-decision")).to_contain_text("Stan Split")
        assert not faces_frame(served.context.db).equals(before)
        step(page, "review-flow-06-split.png")
        page.locator("#undo").click()
        expect(page.locator("#status")).to_contain_text("Undone")
        expect(page.locator("#people li", has_text="Stan Split")).to_have_count(0)
        pd.testing.assert_frame_equal(faces_frame(served.context.db), before)
        step(page, "review-flow-07-undone.png")

        # Ignore: a face of a group leaves every list and stays out of the next cluster-dual.
        card = page.locator("article.cluster").first
        card_id = card.get_attribute("data-cluster-id")
        card.locator(".ignore-group").click()
        expect(page.locator(f"article[data-cluster-id='{card_id}']")).to_have_count(0)
        page.locator("#ignored > li").first.wait_for()
        ignored = [
            int(x) for x in page.locator("#ignored > li").evaluate_all("(items) => items.map((i) => i.dataset.faceId)")
        ]
        assert ignored
        step(page, "review-flow-08-ignored.png")
    group_faces(served.context)
    with served.context.db.session() as session:
        rows = session.execute(
            select(FaceInstance.id, FaceInstance.cluster_id, FaceInstance.person_id, FaceInstance.ignored).where(
                FaceInstance.id.in_(ignored)
            )
        ).all()
    assert len(rows) == len(ignored)
    assert all(r.ignored and r.person_id is None and r.cluster_id == f"unknown_noise_{r.id}" for r in rows)
    listed = served.api("GET", "/faces/clusters", params={"limit": 500})["items"]
    assert card_id not in {c["cluster_id"] for c in listed}
