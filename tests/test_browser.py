"""End to end: the web page in headless Chromium against a live server on loopback.

Uploads photos through the file chooser and by drag and drop, and checks what a user sees (the
top-k list, the map, the heatmap) against the Predictor called directly. Every request the page
makes outside the server is blocked and recorded: the page must work offline.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil

import pytest
from PIL import Image

from geovit.geo import haversine_km
from geovit.serve import background_server, create_app

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason="no Chromium at /usr/bin/chromium (install Debian's `chromium`; `make test` tries)",
    ),
]


@pytest.fixture(scope="module")
def server(predictor):
    with background_server(create_app(predictor)) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; requests leaving the server are aborted and listed in
    page.offsite, console errors in page.errors."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    pg = context.new_page()
    pg.offsite, pg.errors = [], []

    def guard(route):
        url = route.request.url
        if url.startswith(server) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            pg.offsite.append(url)
            route.abort()

    pg.route("**/*", guard)
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(m.text))
    pg.goto(f"{server}/")
    pg.wait_for_selector("body[data-ready=true]")
    yield pg
    context.close()


def drop_file(page, name: str, data: bytes, mime: str) -> None:
    """Drag and drop a file onto the drop zone, as a user would from the desktop."""
    transfer = page.evaluate_handle(
        """([name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: mime }));
            return dt;
        }""",
        [name, base64.b64encode(data).decode(), mime],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def test_upload_shows_top_k_map_and_heatmap(page, predictor, photos, tmp_path):
    page.set_input_files("#file-input", str(photos[0]))
    page.wait_for_function("document.querySelectorAll('#topk li').length === 5")
    page.wait_for_selector("#heatmap[data-loaded=true]", state="visible")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    ref = predictor.predict(Image.open(photos[0]), top_k=5)  # decoded as the server does
    items = page.locator("#topk li")
    assert [items.nth(i).get_attribute("data-token") for i in range(5)] == ref.tokens
    first = items.nth(0).inner_text()
    assert ref.names[0] in first and f"{100 * ref.probs[0]:.1f}%" in first
    assert f"{abs(ref.best_lat):.3f}" in page.inner_text("#best-guess")

    # The map is geovit.maps' own HTML map: every cell coloured, the top cells outlined, the
    # best-guess cross, the graticule and a scale bar, and the same colour scale stated.
    page.wait_for_selector("#map-frame[data-loaded=true]", state="visible")
    frame = page.frame_locator("#map-frame")
    assert frame.locator("#cells path").count() == len(predictor.cells)
    assert frame.locator("#top path").count() == 5
    assert frame.locator("#best").count() == 1 and frame.locator("#scalebar").count() == 1
    assert frame.locator("#basemap .graticule").count() > 0
    assert frame.locator("#basemap .coastline").count() > 0  # the embedded basemap drew
    assert "log scale, fixed 0.0001 to 1" in frame.locator("#scalekind").inner_text()
    assert "most photos near" in first
    size = page.eval_on_selector("#heatmap", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [predictor.image_size, predictor.image_size]
    assert page.offsite == [] and page.errors == []


def test_true_location_draws_the_error_line_and_distance(page, predictor, photos, tmp_path):
    lat, lon = 40.76, -111.89
    page.fill("#true-lat", str(lat))
    page.fill("#true-lon", str(lon))
    page.set_input_files("#file-input", str(photos[0]))
    page.wait_for_selector("#map-frame[data-loaded=true]", state="visible")
    page.screenshot(path=str(tmp_path / "page_truth.png"), full_page=True)
    ref = predictor.predict(Image.open(photos[0]), top_k=1)
    km = haversine_km(ref.best_lat, ref.best_lon, lat, lon)  # the reference distance
    shown = re.sub(r"\.0$", "", f"{float(km):,.1f}")  # as JavaScript's toLocaleString writes it
    assert f"{shown} km from the true location" in page.inner_text("#truth-error")
    frame = page.frame_locator("#map-frame")
    assert frame.locator("#truthline path.truthline").count() >= 1
    assert f"{shown} km from the best guess" in frame.locator("#truthnote").inner_text()
    assert page.offsite == [] and page.errors == []


def test_drop_bad_file_then_good_photo(page, predictor, photos):
    drop_file(page, "notes.txt", b"not a photo at all", "text/plain")
    page.wait_for_selector("#error", state="visible")
    assert "not an image" in page.inner_text("#error")
    assert page.locator("#topk li").count() == 0
    assert page.is_hidden("#map-frame")
    # The refused upload leaves no broken-image icon: no visible <img> without a decoded image.
    broken = page.eval_on_selector_all(
        "img", "els => els.filter((e) => e.offsetParent && !e.naturalWidth).length"
    )
    assert broken == 0 and page.is_hidden("#photo-wrap")

    buf = io.BytesIO()
    Image.open(photos[1]).save(buf, format="PNG")
    drop_file(page, "street.png", buf.getvalue(), "image/png")
    page.wait_for_function("document.querySelectorAll('#topk li').length === 5")
    assert page.is_hidden("#error")
    ref = predictor.predict(Image.open(buf), top_k=5)
    tokens = page.eval_on_selector_all("#topk li", "els => els.map((e) => e.dataset.token)")
    assert tokens == ref.tokens
    assert page.offsite == []


# --- the HTML report, as a reader sees it ------------------------------------------------------

WARNING_BACKGROUND = (0xFF, 0xF3, 0xCD)  # report.py's .warning colour


@pytest.fixture(scope="module")
def report_html(tiny_checkpoint, tiny_world, tmp_path_factory):
    """`geovit report` of the tiny model in a run folder whose CSV log gives training curves."""
    import numpy as np
    import pandas as pd
    from typer.testing import CliRunner

    from geovit.cli import app

    run = tmp_path_factory.mktemp("report_run")
    (run / "logs" / "version_0").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "model.pt")
    nan = np.nan
    pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "step": [5, 5, 11, 11, 17, 17],
            "train/loss_epoch": [3.0, nan, 2.5, nan, 2.2, nan],
            "val/loss": [nan, 3.2, nan, 2.9, nan, 2.8],
            "val/acc1": [nan, 0.1, nan, 0.2, nan, 0.25],
        }
    ).to_csv(run / "logs" / "version_0" / "metrics.csv", index=False)
    out = run / "report"
    args = ["report", "-c", str(run / "model.pt"), "-d", str(tiny_world), "-o", str(out),
            "--examples", "1", "--fast"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out / "report.html"


def test_report_shows_warning_baselines_curves_and_gallery(browser, report_html):
    """Rendered in Chromium (offline), each part is on screen: laid out with a size, images
    decoded, and its pixels in a full-page screenshot drawn, not blank."""
    import numpy as np

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    offsite: list[str] = []

    def guard(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            offsite.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(report_html.as_uri())
    page.wait_for_load_state("load")
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB"))

    def region(locator) -> np.ndarray:
        assert locator.is_visible()
        box = locator.bounding_box()  # page coordinates: the page is not scrolled
        assert box["width"] > 50 and box["height"] > 10
        x, y = int(box["x"]), int(box["y"])
        return shot[y : y + int(box["height"]), x : x + int(box["width"])].astype(float)

    warning = page.locator("#synthetic-warning")
    assert "synthetic" in warning.inner_text().lower()
    pixels = region(warning)
    background = np.all(np.abs(pixels - WARNING_BACKGROUND) <= 2, axis=-1).mean()
    assert background > 0.5  # the yellow warning box is drawn ...
    assert (pixels.sum(axis=-1) < 300).mean() > 0.01  # ... with dark text on it
    top = warning.bounding_box()["y"]
    assert top < 900  # in the first screen, before the metrics

    baselines = page.locator("xpath=//h3[starts-with(., 'Baselines')]/following-sibling::table[1]")
    text = baselines.inner_text()
    for row in ("this model", "always the most common training cell", "chance"):
        assert row in text
    assert (region(baselines).sum(axis=-1) < 300).mean() > 0.01  # its text is drawn

    figures = [page.locator("img[alt='training curves']")]
    gallery = page.locator("figure img")
    assert gallery.count() >= 2  # one example: its heatmap and its probability map
    figures += [gallery.nth(i) for i in range(gallery.count())]
    for img in figures:
        assert img.evaluate("el => el.complete && el.naturalWidth > 100")
        assert region(img).std() > 20  # a drawn figure, not an empty box
    caption = page.locator("figure figcaption").first
    assert caption.is_visible()
    size = float(caption.evaluate("el => getComputedStyle(el).fontSize").removesuffix("px"))
    assert size >= 14  # gallery labels readable
    assert offsite == []
    context.close()
