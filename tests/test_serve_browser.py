"""The web page of `treeclip serve`, driven in headless Chromium (Debian's /usr/bin/chromium
through Playwright; no browser download). Run with `pytest -m browser`.

With TREECLIP_SCREENSHOT=PATH it also saves a screenshot there (how
docs/serve-screenshot.png, the README's picture, is made); otherwise it leaves the
tracked docs alone."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from _serve_helpers import N_TAXA, make_model_dir, request, start_cli_server

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("TREECLIP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = os.environ.get("TREECLIP_SCREENSHOT")


def photo(path: Path, body: tuple[int, int, int], background: tuple[int, int, int], wings: bool) -> Path:
    """A small drawn 'organism' on a plain background, saved as JPEG."""
    img = Image.new("RGB", (160, 120), background)
    d = ImageDraw.Draw(img)
    if wings:
        d.ellipse((20, 20, 78, 80), fill=tuple(255 - c for c in body))
        d.ellipse((82, 20, 140, 80), fill=tuple(255 - c for c in body))
    d.ellipse((55, 35, 105, 105), fill=body)
    d.ellipse((70, 15, 90, 38), fill=(20, 20, 20))
    img.save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = make_model_dir(tmp_path_factory.mktemp("serve-browser"))
    proc, url = start_cli_server(root)
    yield root, url.replace("localhost", "127.0.0.1")
    proc.terminate()
    proc.wait(20)


def test_page_classifies_uploads_switches_rank_and_exports_csv(served, tmp_path):
    import playwright.sync_api as playwright_api
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests need it)")
    root, base = served
    photos = [photo(tmp_path / "monarch.jpg", (230, 120, 20), (200, 230, 190), True),
              photo(tmp_path / "raven.jpg", (25, 25, 35), (170, 200, 235), False),
              photo(tmp_path / "rose.jpg", (210, 40, 80), (60, 130, 50), False)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo at all")

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('taxa')")
            assert f"{N_TAXA} taxa" in page.text_content("#model")

            page.set_input_files("#files", [str(f) for f in photos] + [str(broken)])
            page.wait_for_function("document.querySelectorAll('.card .answer').length === 3", timeout=60_000)
            cards = page.query_selector_all(".card")
            assert len(cards) == 4
            # every good photo: a species answer from the label set, its lineage, a bar per prediction
            for card in cards[:3]:
                answer = card.query_selector(".answer").inner_text().strip()
                assert answer.split()[0] in {"Pica", "Corvus", "Bubo", "Danaus", "Rosa"}
                assert "kingdom" in card.query_selector(".lineage").inner_text()
                assert len(card.query_selector_all("svg.bars rect")) == 5
                assert "Roll-up" in card.query_selector(".rollup").inner_text()
            assert "broken.jpg" in cards[3].query_selector(".err").inner_text()
            assert "could not be read" in page.text_content("#status")

            # switch rank and k: the same embeddings, classified again, nothing re-uploaded
            _, before = request(base + "/health")
            uploads: list[bool] = []
            page.on("request", lambda r: uploads.append(b'name="files"' in (r.post_data_buffer or b""))
                    if r.url.endswith("/predict") else None)
            page.fill("#k", "3")
            page.dispatch_event("#k", "change")
            page.wait_for_function("[...document.querySelectorAll('.card svg.bars')].every(s => s.querySelectorAll('rect').length === 3)")
            page.select_option("#rank", "family")
            page.wait_for_function("document.getElementById('status').textContent.includes('family')")
            families = {c.inner_text().strip() for c in page.query_selector_all(".card .answer")}
            assert families <= {"Corvidae", "Strigidae", "Nymphalidae", "Rosaceae"}
            _, after = request(base + "/health")
            assert after["batching"]["items"] == before["batching"]["items"]  # no image encoded again
            assert uploads and not any(uploads)  # the page sent ids, not files

            # CSV download: one row per (photo, prediction), the good photos only
            with page.expect_download() as info:
                page.click("#csv")
            rows = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text())))
            assert len(rows) == 3 * 3
            assert {r["file"] for r in rows} == {f.name for f in photos}
            assert {r["rank"] for r in rows} == {"family"}
            assert all(0 < float(r["score"]) <= 1 for r in rows)

            # search the label set by common name
            page.fill("#taxa-q", "magpie")
            page.wait_for_function("document.getElementById('taxa-results').textContent.includes('Pica')")
            assert "Pica hudsonia (black-billed magpie)" in page.text_content("#taxa-results")

            # custom labels replace the tree; clearing them brings the tree back
            page.fill("#labels", "ladybird\nfield mouse")
            page.dispatch_event("#labels", "change")
            page.wait_for_function("[...document.querySelectorAll('.card .answer')].every("
                                   "a => ['ladybird', 'field mouse'].includes(a.textContent.trim()))")
            page.fill("#labels", "")
            page.dispatch_event("#labels", "change")
            page.select_option("#rank", "species")
            page.wait_for_function("[...document.querySelectorAll('.card .answer')].every("
                                   "a => a.textContent.trim().split(' ').length === 2)")
            shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
