"""HTTP API and the single-page web app: upload a photo, get the top cells, a heatmap and a map.

The model loads once. Decoding and inference run in worker threads (off the event loop): at most
DECODE_SLOTS uploads decode at once, outside the model lock, and one request at a time holds the
model, so a burst of uploads queues instead of exhausting memory and one slow decode does not
block inference. /explain stops when its client disconnects. A POST from a web page of another
origin is refused (403), so no site a user visits can make the server work for it. Every bad
upload is answered with a 4xx JSON error that names the problem; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any, Literal, Protocol

import anyio
import h11
import numpy as np
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from geovit import __version__
from geovit.data.images import decode_image, open_image
from geovit.errors import GeovitError
from geovit.explain import DESIGN_PATCH, DESIGN_STRIDE, explain_image, window_starts
from geovit.figures import image_bytes
from geovit.geojson import cell_info, partition_geojson, prediction_geojson
from geovit.maps import best_guess, probability_map_html

DEFAULT_MAX_BYTES = 20_000_000
DEFAULT_MAX_PIXELS = 40_000_000
# /explain runs one forward pass per occlusion position: the grid is bounded (the default
# patch 32 / stride 8 on a 224 px model gives 25 x 25 = 625 positions).
MAX_EXPLAIN_POSITIONS = 1024
# Decodes run outside the model lock, at most this many at once (bounded memory).
DECODE_SLOTS = 2
# uvicorn: drop idle keep-alive connections, and clients that send no complete request
# headers (half-open or slowloris connections), after this many seconds.
KEEP_ALIVE_S = 5
HEADER_TIMEOUT_S = 10.0
# Multipart framing (boundaries, part headers) around the image; the body limit allows for it.
MULTIPART_SLACK = 64 * 1024

_PACKAGE = resources.files("geovit")
STATIC_DIR = _PACKAGE / "static"
BASEMAP_PATH = _PACKAGE / "assets" / "basemap.json"


class ServablePredictor(Protocol):
    """What the server needs: geovit.predictor.Predictor and geovit.onnxmodel.OnnxPredictor fit."""

    cells: Any
    image_size: int
    mean: Any
    std: Any
    transform: Any  # decoded uint8 (3,H,W) -> model input, what preprocess applies after decoding
    point: Any  # the best guess's estimator (geovit.points), set by Predictor.configure
    tta: int  # test-time crops whose softmax is averaged

    def preprocess(self, img: Any) -> Any: ...

    def predict_proba(self, x: Any) -> Any: ...

    def predict(self, img: Any, top_k: int = 5) -> Any: ...


# ----------------------------------------------------------------------------- image decoding


def _bytes(n: int) -> str:
    return f"{n:,} bytes"


def decode_upload(data: bytes, *, name: str, max_bytes: int, max_pixels: int) -> Image.Image:
    """Fully decode an uploaded image to RGB, or raise an HTTPException naming the problem.

    The format (IMAGE_FORMATS only: no other decoder is ever reached), the JPEG scan count and
    the pixel count are checked from the header before decoding, so a decompression bomb or a
    many-scan progressive JPEG is refused without decoding it. Pixels then come from the same
    decoder the CLI and the datasets use (geovit.data.images.decode_image: 16-bit PNGs too).
    """
    if not data:
        raise HTTPException(400, f"the uploaded image {name!r} is empty (0 bytes)")
    if len(data) > max_bytes:
        raise HTTPException(
            413, f"the image {name!r} is {_bytes(len(data))}, over the {_bytes(max_bytes)} limit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = open_image(data)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"the image {name!r} has too many pixels: {exc}") from exc
    except GeovitError as exc:
        raise HTTPException(
            415,
            f"{name!r} is not an image geovit can read ({exc}); send a JPEG, PNG or WebP photo",
        ) from exc
    width, height = header.size
    header.close()
    if width * height > max_pixels:
        raise HTTPException(
            413,
            f"the image {name!r} is {width}x{height} = {width * height / 1e6:.0f} megapixels, "
            f"over the {max_pixels / 1e6:.0f} megapixel limit; downscale it first",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pixels = decode_image(data)
    except GeovitError as exc:
        raise HTTPException(
            400, f"the image {name!r} is truncated or corrupt and cannot be decoded ({exc})"
        ) from exc
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


# ----------------------------------------------------------------------------- JSON bodies


def prediction_json(cells: Any, pred: Any) -> dict[str, Any]:
    """The /predict body for one geovit.predictor.Prediction (minus timing): its to_dict and
    its top-k cells as GeoJSON polygons."""
    return {**pred.to_dict(), "geojson": prediction_geojson(cells, pred, best_guess=False)}


# ----------------------------------------------------------------------------- heatmap


def heatmap_png(heat: np.ndarray, size: tuple[int, int], cmap: str = "inferno") -> bytes:
    """An RGBA PNG of a heatmap resized to `size` (w, h): transparent where nothing matters.

    Only positive values (the top cell's probability dropped when that region was hidden) are
    shown, scaled by the maximum, so the overlay highlights the evidence the model used.
    """
    from matplotlib import colormaps

    h = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float64)), 0.0, None)
    top = h.max()
    norm = h / top if top > 0 else h
    rgba = colormaps[cmap](norm)
    rgba[..., 3] = 0.85 * np.sqrt(norm)
    img = Image.fromarray((rgba * 255).round().astype(np.uint8), mode="RGBA")
    return image_bytes(img.resize(size, Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------- the app


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, "status": status, **extra}, status_code=status)


class BodyLimit:
    """ASGI middleware: 413 (JSON) for a request body over `max_body` bytes.

    A declared Content-Length over the limit is refused before reading anything; a body without
    one (chunked) is counted while it streams in and refused as soon as it passes the limit, so a
    client cannot make the server spool an unbounded upload.
    """

    def __init__(self, app: ASGIApp, max_body: int, message: str) -> None:
        self.app = app
        self.max_body = max_body
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await _error(413, self.message)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    # FastAPI re-raises an HTTPException from body reading to the handlers.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted, send)


def _install_error_handlers(app: FastAPI) -> None:
    """JSON errors with one readable `detail` line (FastAPI's defaults are terse or nested)."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(GeovitError)
    async def geovit_error(request: Request, exc: GeovitError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())  # their ctx may hold exceptions
        on_image = [e for e in errors if tuple(e.get("loc", ()))[-1:] == ("image",)]
        missing_image = any(e.get("type") == "missing" for e in on_image)
        if on_image and not missing_image:
            return _error(
                422,
                "the field 'image' is text, not a file: send the photo as multipart/form-data "
                "in a file field named 'image'",
            )
        if not missing_image:
            return _error(422, "; ".join(str(e.get("msg")) for e in errors), errors=errors)
        if request.headers.get("content-length") in (None, "0"):
            return _error(
                400,
                "the request body is empty: send the photo as multipart/form-data "
                "in a file field named 'image'",
            )
        return _error(
            422,
            "no file field named 'image' in the form: send the photo as "
            "multipart/form-data in a file field named 'image'",
        )


class SameOriginPosts:
    """ASGI middleware: 403 for a POST whose Origin header names another site.

    Browsers send Origin with every cross-origin POST, and a multipart form POST needs no CORS
    preflight, so without this check any page a user visits could make a local server run
    /explain for it. Clients that send no Origin (curl, scripts) are not browsers and pass.
    """

    def __init__(self, app: ASGIApp, allowed_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowed = {o.rstrip("/") for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allowed(origin, headers.get("host", "")):
                message = (
                    f"cross-origin request from {origin} refused: call the API from its own "
                    "page, or without an Origin header (curl, scripts)"
                )
                return await _error(403, message)(scope, receive, send)
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin.rstrip("/") in self.allowed:
            return True
        scheme, _, rest = origin.partition("://")
        return scheme in ("http", "https") and rest.rstrip("/") == host


class ClientGone(Exception):
    """The client of a long request disconnected: its work is abandoned."""


class Cancellable:
    """A predictor whose predict_proba raises ClientGone once `cancelled` is set.

    Occlusion calls predict_proba once per batch of positions, so work stops within a batch.
    """

    def __init__(self, inner: ServablePredictor, cancelled: threading.Event) -> None:
        self.inner, self.cancelled = inner, cancelled

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def predict_proba(self, x: Any) -> Any:
        if self.cancelled.is_set():
            raise ClientGone
        return self.inner.predict_proba(x)


async def run_while_connected(request: Request, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(cancelled, *args, **kwargs)`` in a worker thread; set ``cancelled`` as soon as
    the client disconnects (then answer 499 to nobody)."""
    cancelled = threading.Event()

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(0.1)
        cancelled.set()

    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            return await run_in_threadpool(fn, cancelled, *args, **kwargs)
        except ClientGone:
            raise HTTPException(499, "the client disconnected; the work was stopped") from None
        finally:
            group.cancel_scope.cancel()


def explain_positions(size: int, patch: int, stride: int) -> int:
    """Occlusion positions (forward passes) of one explanation, as geovit.explain places them."""
    return len(window_starts(size, patch, stride)) ** 2


def create_app(
    predictor: ServablePredictor,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    top_k: int = 5,
    allowed_origins: tuple[str, ...] = (),
) -> FastAPI:
    """The geovit FastAPI app around a loaded predictor (torch Predictor or OnnxPredictor).

    `allowed_origins` lists other web origins (e.g. "https://my.site") whose pages may POST.
    """
    cells = predictor.cells
    k = min(top_k, len(cells))
    backend = type(predictor).__name__
    model_lock = anyio.Lock()  # one inference at a time: bounded memory under load
    decode_slots = anyio.CapacityLimiter(DECODE_SLOTS)
    cached: dict[str, Any] = {}

    app = FastAPI(
        title="geovit",
        version=__version__,
        summary="Where was this street-level photo taken?",
        description=(
            "Upload a photo as multipart field `image`. Note: this /docs page loads Swagger UI "
            "from a CDN; the main page at `/` works offline."
        ),
    )
    _install_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        max_body=max_bytes + MULTIPART_SLACK,
        message=f"the upload is over the {_bytes(max_bytes)} limit; send a smaller image",
    )
    app.add_middleware(SameOriginPosts, allowed_origins=allowed_origins)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    async def read_image(upload: UploadFile) -> tuple[Image.Image, float]:
        """Read the upload (its size is bounded by BodyLimit) and decode it in a worker thread,
        outside the model lock."""
        data = await upload.read()
        t0 = time.perf_counter()
        decode = functools.partial(
            decode_upload,
            data,
            name=upload.filename or "image",
            max_bytes=max_bytes,
            max_pixels=max_pixels,
        )
        img = await anyio.to_thread.run_sync(decode, limiter=decode_slots)
        return img, (time.perf_counter() - t0) * 1e3

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness plus what the loaded model is."""
        return {
            "status": "ok",
            "classes": len(cells),
            "image_size": int(predictor.image_size),
            "backend": backend,
            "top_k": k,
            "point": predictor.point.name,
            "tta": predictor.tta,
            "max_bytes": max_bytes,
            "max_pixels": max_pixels,
            "geovit_version": __version__,
        }

    @app.get("/cells")
    async def cells_endpoint() -> JSONResponse:
        """The cell partition (the classes) as a GeoJSON FeatureCollection."""
        if "cells" not in cached:
            cached["cells"] = await run_in_threadpool(partition_geojson, cells)
        return JSONResponse(cached["cells"])

    @app.get("/basemap.json", include_in_schema=False)
    async def basemap() -> FileResponse:
        """Natural Earth coastlines and borders for the page's offline map."""
        return FileResponse(str(BASEMAP_PATH), media_type="application/json")

    @app.post("/predict")
    async def predict(image: UploadFile = File(..., description="the photo")) -> dict[str, Any]:
        """Top-k cells with probabilities, the best-guess coordinate and the cells as GeoJSON."""
        t0 = time.perf_counter()
        img, decode_ms = await read_image(image)
        async with model_lock:
            t1 = time.perf_counter()
            pred = await run_in_threadpool(predictor.predict, img, top_k=k)
            infer_ms = (time.perf_counter() - t1) * 1e3
        body = prediction_json(cells, pred)
        body["image"] = {"width": img.width, "height": img.height}
        body["timing_ms"] = {
            "decode": decode_ms,
            "inference": infer_ms,
            "total": (time.perf_counter() - t0) * 1e3,
        }
        return body

    @app.post("/map", response_class=HTMLResponse)
    async def map_page(
        image: UploadFile = File(..., description="the photo"),
        lat: float | None = Form(None, ge=-90, le=90, description="true latitude (optional)"),
        lon: float | None = Form(None, ge=-180, le=180, description="true longitude (optional)"),
    ) -> HTMLResponse:
        """The photo's probability map as a self-contained HTML page, drawn as `geovit map`
        draws it; with lat/lon also the truth, the line to it and (header X-Geovit-Error-Km)
        the best guess's distance to it."""
        if (lat is None) != (lon is None):
            raise HTTPException(422, "give both lat and lon of the true location (or neither)")
        img, _ = await read_image(image)  # decoded outside the lock: a slow decode blocks no one
        async with model_lock:
            probs = await run_in_threadpool(
                lambda: np.asarray(predictor.predict_proba(predictor.preprocess(img)[None]))[0]
            )
        page = await run_in_threadpool(
            probability_map_html, cells, np.asarray(probs, np.float64), lat=lat, lon=lon, top_k=k
        )
        headers = {}
        if lat is not None and lon is not None:
            _, km = best_guess(cells, np.asarray(probs, np.float64), (lat, lon))
            headers["X-Geovit-Error-Km"] = f"{km:.1f}"
        return HTMLResponse(page, headers=headers)

    @app.post("/explain", response_model=None)
    async def explain(
        request: Request,
        image: UploadFile = File(..., description="the photo"),
        format: Literal["png", "json"] = Query("png", description="PNG overlay or JSON grid"),
        patch: int = Query(
            DESIGN_PATCH, ge=1, description="occluding square, in model-input pixels"
        ),
        stride: int = Query(DESIGN_STRIDE, ge=1, description="step between occlusions, in pixels"),
    ) -> Response | dict[str, Any]:
        """Occlusion sensitivity of the top cell: how much hiding each region lowers its
        probability. An RGBA PNG overlay at the model's input size, or the grid as JSON."""
        size = int(predictor.image_size)
        if not stride <= patch <= size:
            raise HTTPException(
                422,
                f"need stride <= patch <= {size} (the model input), got patch={patch} "
                f"stride={stride}",
            )
        positions = explain_positions(size, patch, stride)
        if positions > MAX_EXPLAIN_POSITIONS:
            raise HTTPException(
                422,
                f"patch={patch} stride={stride} needs {positions:,} forward passes, over the "
                f"{MAX_EXPLAIN_POSITIONS:,} limit; use a larger stride",
            )
        t0 = time.perf_counter()
        img, _ = await read_image(image)

        def occlude(cancelled: threading.Event) -> Any:
            watched = Cancellable(predictor, cancelled)
            return explain_image(watched, img, target="top", patch=patch, stride=stride)

        async with model_lock:
            expl = await run_while_connected(request, occlude)
        elapsed = (time.perf_counter() - t0) * 1e3
        if format == "json":
            return {
                "target": {**cell_info(cells, expl.target), "probability": expl.prob},
                "grid": np.asarray(expl.heatmap, dtype=np.float64).tolist(),
                "shape": list(expl.heatmap.shape),
                "patch": patch,
                "stride": stride,
                "timing_ms": elapsed,
            }
        png = await run_in_threadpool(heatmap_png, expl.heatmap, (size, size))
        headers = {"X-Geovit-Target-Token": expl.token, "X-Geovit-Time-Ms": f"{elapsed:.0f}"}
        return Response(png, media_type="image/png", headers=headers)

    return app


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers.

    uvicorn times out idle keep-alive connections but not one that connects and sends nothing
    or half a request; such connections would otherwise stay open forever.
    """

    header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        waiting = self.conn.their_state is h11.IDLE
        if waiting and self.header_timer is None:
            self.header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._header_deadline)
        elif not waiting and self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_deadline(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, **kwargs: Any) -> uvicorn.Config:
    """uvicorn settings of every geovit server: header deadline and keep-alive timeout."""
    return uvicorn.Config(app, http=HeaderDeadlineH11, timeout_keep_alive=KEEP_ALIVE_S, **kwargs)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve with uvicorn until interrupted."""
    uvicorn.Server(server_config(app, host=host, port=port, log_level="info")).run()


@contextmanager
def background_server(
    app: FastAPI, host: str = "127.0.0.1", timeout: float = 30.0
) -> Iterator[str]:
    """Run the app with uvicorn in a thread on a free port; yields its base URL.

    The socket is bound here (port 0) and handed to uvicorn, so there is no race for the port.
    For tests, benchmarks and notebooks.
    """
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(server_config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise GeovitError(f"the geovit server did not start on {host} within {timeout:.0f} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
