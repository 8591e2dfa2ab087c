"""HTTP API on a randomly initialised small model: every endpoint, every bad upload.

References: the Predictor called directly (same photo), geovit.explain, s2geometry's cell
vertices and matplotlib's point-in-polygon for the GeoJSON, hand-made broken files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import re
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import s2geometry as s2
from fastapi.testclient import TestClient
from matplotlib.path import Path as MplPath
from PIL import Image

from geovit.explain import explain_image
from geovit.geo import haversine_km
from geovit.predictor import Predictor
from geovit.serve import STATIC_DIR, create_app

MAX_BYTES = 150_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    app = create_app(predictor, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, top_k=5)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def photo(photo) -> bytes:
    """The shared photo's bytes (what an upload sends)."""
    return photo.read_bytes()


def upload(data: bytes, name: str = "photo.jpg", field: str = "image") -> dict:
    return {"files": {field: (name, data, "image/jpeg")}}


def png_with_size(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose header claims width x height: a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def assert_still_serving(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"


# ----------------------------------------------------------------------------- endpoints


def test_health_describes_the_model(client, predictor, tiny_image_size):
    body = client.get("/health").json()
    assert body["classes"] == len(predictor.cells)
    assert body["image_size"] == tiny_image_size
    assert body["max_bytes"] == MAX_BYTES and body["max_pixels"] == MAX_PIXELS


def test_predict_matches_the_predictor(client, predictor, photo):
    r = client.post("/predict", **upload(photo))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = predictor.predict(Image.open(io.BytesIO(photo)), top_k=5)
    top = body["top_k"]
    assert [c["token"] for c in top] == ref.tokens
    np.testing.assert_allclose([c["probability"] for c in top], ref.probs, rtol=1e-5)
    assert [c["rank"] for c in top] == [1, 2, 3, 4, 5]
    cells = predictor.cells
    for c in top:
        assert c["name"] == cells.names[c["index"]]
        assert (c["lat"], c["lon"]) == (
            cells.centroid_lat[c["index"]],
            cells.centroid_lon[c["index"]],
        )
    assert body["best_guess"] == {"lat": top[0]["lat"], "lon": top[0]["lon"]}
    features = body["geojson"]["features"]
    assert [f["properties"]["token"] for f in features] == ref.tokens
    assert [f["properties"]["probability"] for f in features] == [c["probability"] for c in top]
    width, height = Image.open(io.BytesIO(photo)).size
    assert body["image"] == {"width": width, "height": height}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


def test_predict_computes_tokens_once_and_corners_of_the_drawn_cells_only(
    predictor, photo, monkeypatch
):
    from geovit import s2 as gs2

    cells = dataclasses.replace(predictor.cells)  # a partition with nothing cached yet
    fresh = Predictor(predictor.model, cells, predictor.mean, predictor.std,
                      predictor.image_size, device="cpu")  # fmt: skip
    sizes: dict[str, list[int]] = {"tokens": [], "corners": []}
    for name, attr in (("tokens", "cell_id_to_token"), ("corners", "cell_vertices_xyz")):
        fn = getattr(gs2, attr)

        def counted(ids, *a, _fn=fn, _name=name, **kw):
            sizes[_name].append(np.size(ids))
            return _fn(ids, *a, **kw)

        monkeypatch.setattr(gs2, attr, counted)
    with TestClient(create_app(fresh, top_k=5)) as c:
        for _ in range(2):
            assert c.post("/predict", **upload(photo)).status_code == 200
    assert sizes["tokens"] == [len(cells)]  # all K tokens once, for every request after
    assert sizes["corners"] == [5, 5]  # only the 5 drawn cells' corners, per request


def test_predict_accepts_png(client, photo):
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buf, format="PNG")
    r = client.post("/predict", files={"image": ("x.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text


def test_cells_geojson_is_the_partition(client, predictor):
    features = client.get("/cells").json()["features"]
    cells = predictor.cells
    assert [f["properties"]["token"] for f in features] == list(cells.tokens)
    assert [f["properties"]["count"] for f in features] == cells.counts.tolist()
    for f in features:
        ring = np.array(f["geometry"]["coordinates"][0])
        np.testing.assert_array_equal(ring[0], ring[-1])
        cell = s2.S2Cell(s2.S2CellId.FromToken(f["properties"]["token"]))
        for k in range(4):  # every corner, as s2geometry computes it, is on the ring
            ll = s2.S2LatLng(cell.GetVertex(k))
            lon, lat = ll.lng().degrees(), ll.lat().degrees()
            assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-4
        center = s2.S2LatLng(cell.GetCenter())
        assert MplPath(ring).contains_point((center.lng().degrees(), center.lat().degrees()))


def test_index_page_and_assets_need_no_network(client):
    html = client.get("/").text
    assert 'id="map-frame"' in html and 'id="topk"' in html and 'id="true-lat"' in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "page references its script and stylesheet"
    for ref in refs:
        if not ref.startswith("data:"):
            assert not re.match(r"^(https?:)?//", ref), ref
            assert client.get(f"/{ref}").status_code == 200, ref
    for asset in STATIC_DIR.iterdir():
        urls = set(re.findall(r"https?://[^\s\"'`)]+", asset.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (
            asset.name,
            urls,
        )  # a namespace, not fetched
    assert client.get("/basemap.json").json()["world"]["coastline"]


def test_map_page_is_the_cli_map_with_the_truth(client, predictor, photo):
    """/map returns geovit.maps' HTML map of the photo (the page's one look) and the best
    guess's distance to a given true location, by the haversine formula."""
    lat, lon = 40.76, -111.89
    r = client.post("/map", **upload(photo), data={"lat": str(lat), "lon": str(lon)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    ref = predictor.predict(Image.open(io.BytesIO(photo)), top_k=1)
    km = haversine_km(ref.best_lat, ref.best_lon, lat, lon)
    assert float(r.headers["x-geovit-error-km"]) == pytest.approx(km, abs=0.05)
    assert 'class="truthline"' in r.text and "log scale, fixed" in r.text
    bad = client.post("/map", **upload(photo), data={"lat": "40"})
    assert bad.status_code == 422 and "both lat and lon" in bad.json()["detail"]


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/explain", "/health", "/cells"} <= set(paths)


def test_explain_json_matches_geovit_explain(client, predictor, photo, tiny_image_size):
    r = client.post(
        "/explain", params={"format": "json", "patch": 32, "stride": 16}, **upload(photo)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ref = explain_image(predictor, Image.open(io.BytesIO(photo)), target="top", patch=32, stride=16)
    assert body["target"]["index"] == ref.target == ref.top
    np.testing.assert_allclose(np.array(body["grid"]), ref.heatmap, atol=1e-6)
    assert body["shape"] == [tiny_image_size, tiny_image_size]


def test_explain_png_overlay(client, photo, tiny_image_size):
    r = client.post("/explain", params={"patch": 32, "stride": 16}, **upload(photo))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.mode == "RGBA" and img.size == (tiny_image_size, tiny_image_size)
    top = client.post("/predict", **upload(photo)).json()["top_k"][0]["token"]
    assert r.headers["x-geovit-target-token"] == top


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("text", 415, "not an image"),
        ("truncated", 400, "truncated"),
        ("empty_file", 400, "empty"),
        ("empty_body", 400, "empty"),
        ("wrong_field", 422, "field named 'image'"),
        ("too_big_declared", 413, "limit"),
        ("slightly_too_big", 413, "limit"),
        ("bomb_pil", 413, "pixels"),
        ("bomb_limit", 413, "megapixel limit"),
        ("bad_patch", 422, "patch"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_the_server_keeps_serving(client, photo, case, status, words):
    requests = {
        "text": lambda: client.post("/predict", **upload(b"hello, not a photo", "notes.txt")),
        "truncated": lambda: client.post("/predict", **upload(photo[: len(photo) // 2])),
        "empty_file": lambda: client.post("/predict", **upload(b"")),
        "empty_body": lambda: client.post("/predict"),
        "wrong_field": lambda: client.post("/predict", **upload(photo, field="file")),
        "too_big_declared": lambda: client.post("/predict", **upload(b"\xff" * (3 * MAX_BYTES))),
        "slightly_too_big": lambda: client.post("/predict", **upload(b"\xff" * (MAX_BYTES + 10))),
        "bomb_pil": lambda: client.post("/predict", **upload(png_with_size(100_000, 100_000))),
        "bomb_limit": lambda: client.post("/explain", **upload(png_with_size(3000, 3000))),
        "bad_patch": lambda: client.post("/explain", params={"patch": 999}, **upload(photo)),
    }
    r = requests[case]()
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["detail"]
    assert_still_serving(client)


def test_streamed_upload_without_length_is_cut_at_the_limit(client):
    """Chunked body (no Content-Length): counted while it arrives, refused past the limit."""
    req = httpx.Request("POST", "http://t/predict", files={"image": ("a.jpg", b"\0" * 10**6)})
    body = req.read()
    sent = []

    def chunks():
        for i in range(0, len(body), 16384):
            sent.append(i)
            yield body[i : i + 16384]

    r = client.post(
        "/predict", content=chunks(), headers={"content-type": req.headers["content-type"]}
    )
    assert r.request.headers.get("content-length") is None
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert_still_serving(client)


# ----------------------------------------------------------------------------- concurrency


class SlowPredictor:
    """A predictor whose predict sleeps and records how many calls overlap."""

    def __init__(self, inner: Predictor, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.active = self.peak = 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def predict(self, img, top_k: int = 5):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return self.inner.predict(img, top_k=top_k)
        finally:
            with self.lock:
                self.active -= 1


def test_inference_is_serialized_and_off_the_event_loop(predictor, photo):
    slow = SlowPredictor(predictor, delay=0.3)
    app = create_app(slow)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            t0 = time.perf_counter()
            jobs = [asyncio.create_task(c.post("/predict", **upload(photo))) for _ in range(4)]
            await asyncio.sleep(0.05)
            health = await c.get("/health")
            health_s = time.perf_counter() - t0
            results = await asyncio.gather(*jobs)
            return results, health, health_s, time.perf_counter() - t0

    results, health, health_s, total_s = asyncio.run(scenario())
    assert [r.status_code for r in results] == [200] * 4
    assert slow.peak == 1  # one inference at a time
    assert total_s >= 4 * 0.3
    assert health.status_code == 200 and health_s < 0.3  # answered while inference ran


# ----------------------------------------------------------------------------- hardening


def test_eps_upload_never_reaches_ghostscript(client, ghostscript_standin):
    from conftest import eps_bytes

    r = client.post("/predict", **upload(eps_bytes(), "drawing.eps"))
    assert r.status_code == 415 and "not an image geovit can read" in r.json()["detail"]
    assert not ghostscript_standin.exists(), "the upload ran Ghostscript"
    assert_still_serving(client)


def test_image_sent_as_text_field_is_422(client):
    r = client.post("/predict", data={"image": "not a file"})
    assert r.status_code == 422 and "text, not a file" in r.json()["detail"]
    assert_still_serving(client)


def test_16_bit_png_upload_is_decoded_like_the_cli(client, predictor):
    """One decode path: the server's answer equals the Predictor's on the same bytes."""
    ramp = (np.arange(80 * 120).reshape(80, 120) * 6).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    r = client.post("/predict", **upload(buf.getvalue(), "deep.png"))
    assert r.status_code == 200, r.text
    expected = predictor.predict(buf.getvalue(), top_k=5)
    probs = [c["probability"] for c in r.json()["top_k"]]
    assert np.allclose(probs, expected.probs, atol=1e-5)


def test_cross_origin_posts_are_refused(client, photo):
    """A page on another site can POST multipart without a preflight: the Origin check stops it."""
    evil = client.post("/predict", headers={"Origin": "https://evil.example"}, **upload(photo))
    assert evil.status_code == 403 and "cross-origin" in evil.json()["detail"]
    own = client.post("/predict", headers={"Origin": "http://testserver"}, **upload(photo))
    assert own.status_code == 200
    assert client.post("/predict", **upload(photo)).status_code == 200  # curl: no Origin


def test_explain_cost_is_bounded(client, photo, tiny_image_size):
    from geovit.serve import MAX_EXPLAIN_POSITIONS

    r = client.post("/explain", params={"patch": 1, "stride": 1}, **upload(photo))
    assert r.status_code == 422 and "forward passes" in r.json()["detail"]
    assert tiny_image_size**2 > MAX_EXPLAIN_POSITIONS
    assert f"{tiny_image_size**2:,}" in r.json()["detail"]


def test_bad_upload_is_answered_while_another_request_holds_the_model(predictor, photo):
    """Decoding runs outside the model lock: a queue of inferences does not delay it."""
    slow = SlowPredictor(predictor, delay=1.0)
    app = create_app(slow)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            busy = asyncio.create_task(c.post("/predict", **upload(photo)))
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            bad = await c.post("/predict", **upload(photo[: len(photo) // 2]))
            return bad, time.perf_counter() - t0, await busy

    bad, bad_s, busy = asyncio.run(scenario())
    assert busy.status_code == 200
    assert bad.status_code == 400 and bad_s < 0.5


class CountingPredictor(SlowPredictor):
    """Counts predict_proba calls (one per occlusion batch), each taking `delay` seconds."""

    calls = 0

    def predict_proba(self, x):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.predict_proba(x)


def test_explain_stops_when_the_client_disconnects(predictor, photo):
    from geovit.serve import background_server

    counting = CountingPredictor(predictor, delay=0.25)
    app = create_app(counting)
    with background_server(app) as url:
        # patch 4 / stride 4 on 64 px: 256 positions = 8 batches + the base pass (> 2 s)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/explain", params={"patch": 4, "stride": 4}, timeout=0.6,
                       **upload(photo))  # fmt: skip
        time.sleep(2.5)
        calls = counting.calls
        assert calls <= 5, f"{calls} batches ran after the client left"
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200


def test_half_open_connections_are_dropped(predictor, monkeypatch):
    import socket

    import geovit.serve as serve

    monkeypatch.setattr(serve, "HEADER_TIMEOUT_S", 0.5)
    with serve.background_server(create_app(predictor)) as url:
        host, port = url.removeprefix("http://").split(":")
        for payload in (b"", b"POST /predict HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection((host, int(port))) as sock:
                sock.settimeout(5)
                sock.sendall(payload)
                t0 = time.perf_counter()
                assert sock.recv(100) == b""  # closed by the server
                assert time.perf_counter() - t0 < 3
