"""The REST service and its web page (``msfer serve``).

* ``POST /v1/predict``: one image, as a multipart upload in the field ``image`` (``file``
  is accepted too; two files there are 400), or as the raw request body whatever its
  declared type (curl --data-binary sends x-www-form-urlencoded); answers ``{"source",
  "width", "height", "decision", "faces": [...]}`` with faces as ``msfer predict`` writes them. The decision
  rule is the query parameter ``decision`` (``?decision=balanced``) or a form field of that
  name, else the service's (``msfer serve --decision``); an unknown rule, or "balanced" for a
  model without it, is 422. Whether it is an image
  is decided by its bytes (what Pillow can decode: JPEG, PNG, WebP, BMP, TIFF, GIF, ...),
  never by the declared content type or file name.
* ``GET /healthz``: ``{"status": "ok", ...}`` once the model is loaded, with the limits,
  ``in_flight`` (the requests being recognised or waiting for a turn), ``uploads`` (the
  bodies being received now, and how many uploads timed out or were abandoned by their
  client), the memory budget and what is reserved of it, the decision rules the model offers,
  its calibration figures and ``calibration_note`` (the report's sentence on them), and
  ``uncertain_below``, the report's threshold under which a label counts as uncertain.
* ``GET /``: a page to upload a photo and see it annotated (drawn in the browser
  from the JSON): each face's label, probabilities and quality, the decision rule chosen on
  the page, labels below ``uncertain_below`` marked uncertain and low-quality faces marked as
  such. ``/?demo=1`` runs it on ``GET /sample.jpg``, the bundled sample
  (``&decision=balanced`` to start with that rule). The page and ``/docs`` (the API's
  Swagger UI, served from local files) address everything relatively, so they work behind
  a reverse proxy at a sub-path (``msfer serve --root-path``).

Limits, each answered with a JSON ``{"detail": "..."}`` error, as every error is:

* **upload size** (``max_upload_mb``, the whole request body): 413, from
  ``Content-Length`` before anything is read, and counted while the body is read, so
  a body sent without ``Content-Length`` (chunked) is cut off as soon as it passes the
  limit, never stored in full;
* **upload time** (``upload_timeout``, seconds for the whole body to arrive): 408 and the
  connection closed. A request takes a place in the concurrency gate only once its body has
  arrived, so slow or stalled uploads never hold the places of others; a client that
  disconnects mid-upload is one INFO line in the log. At most ``max_uploads`` bodies are
  received at once (503 with ``Retry-After`` beyond), which bounds the memory they hold;
* **pixels** (``max_pixels``, width x height as the file's header declares them): 413,
  checked before decoding, since a small file can declare a huge image (a 140 KB PNG
  of 12000 x 12000 decodes to 430 MB);
* **concurrency**: ``max_concurrent`` requests decode and infer at once, ``max_queue``
  more wait for a turn; beyond that 503 with ``Retry-After``;
* **memory** (``memory_budget_mb``): each request's peak is estimated from the image's
  header (:func:`~msfer.inference.service_images.estimated_mb`) and a request decodes only while the estimates of those
  running fit the budget (one request alone always runs). An image of more than
  ``decode_pixels`` is decoded reduced by the smallest whole factor that brings it within
  (JPEG: decoded at 1/2 or 1/4 scale directly; others: reduced right after decoding): the
  copy still holds every pixel the detector's finest pass sees. Faces are cropped from that
  copy; the answer's coordinates, sizes and ``width`` / ``height`` are the original image's.
  ``msfer serve`` also limits the allocator's arenas and hands freed memory back after each
  request (:func:`~msfer.inference.service_images.limit_allocator`), so the process's resident size
  stays bounded: measured with ``scripts/service_memory.py``, docs/limits.md has the figures;
* a body that is not an image 415, an image that cannot be decoded (truncated,
  corrupt, empty) 400, two images in one request 400, no image at all 422, any
  unexpected failure 500.

Browser rules, for a service that a browser on the same machine can reach:

* **Host**: a request is answered only under a name the service is for
  (:class:`~msfer.inference.service_guards.AllowedHosts`: IP addresses, names without a dot
  such as ``localhost``, ``*.localhost``, the machine's host name, and ``allowed_hosts``);
  any other ``Host`` is 400, so a DNS-rebinding page cannot use the service.
* **Origin**: a POST that a browser sends from another origin (its ``Origin`` header names
  another host or port than the request's ``Host``) is 403 unless ``allowed_origins`` lists
  that origin (``*``: any), which also get CORS headers. Clients that send no ``Origin``
  (curl, scripts) are not concerned.
* **Headers**: every response carries ``X-Content-Type-Options: nosniff``, a
  ``Content-Security-Policy`` with ``frame-ancestors 'none'`` (scripts, styles and
  requests from the service's own origin only), ``X-Frame-Options: DENY`` and
  ``Referrer-Policy: no-referrer``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..engine.decision import has_balanced_rule
from ..errors import MsferError
from ..samples import SAMPLE_PHOTO
from .recognizer import EmotionRecognizer
from .report import DEFAULT_UNCERTAIN_BELOW, calibration_sentence
from .service_guards import (
    SECURITY_HEADERS,
    AllowedHosts,
    BrowserGuard,
    InferenceGate,
    UploadStats,
    normal_origin,
)
from .service_images import (
    decode_reduced,
    detecting_at,
    estimated_mb,
    image_size,
    in_original_pixels,
    release_memory,
    upright_size,
)

try:  # Swagger UI's files (the serve extra): /docs works offline
    import fastapi_offline
except ImportError:  # pragma: no cover - the serve extra brings it
    SWAGGER_DIR = None
else:
    SWAGGER_DIR = Path(fastapi_offline.__file__).with_name("static")

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10.0
# 40 MP holds any phone or DSLR photo (24-36 MP typical).
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_MAX_QUEUE = 8
# Seconds for a whole request body to arrive: 10 MB at about 1.5 Mbit/s.
DEFAULT_UPLOAD_TIMEOUT_S = 60.0
# Images larger than this are decoded reduced (24 MP: the largest photo whose 40 px faces the detector's
# finest pass still finds at full size; beyond it that pass sees the photo at less than half size anyway).
DEFAULT_DECODE_PIXELS = 24_000_000
# Two 12 MP photos are recognised together, two 40 MP images one after the other (docs/limits.md).
DEFAULT_MEMORY_BUDGET_MB = 1000.0
# Request bodies being received at once; each holds up to max_upload_mb.
DEFAULT_MAX_UPLOADS = 16
RETRY_AFTER_S = 2
FIELD_NAMES = ("image", "file")
STATIC_DIR = Path(__file__).with_name("static")


@dataclass
class Service:
    """What the handlers share: the recognizer, the limits and the gate (``app.state.service``)."""

    recognizer: EmotionRecognizer
    max_upload_mb: float
    max_pixels: int
    max_concurrent: int
    max_queue: int
    gate: InferenceGate
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S
    decode_pixels: int = DEFAULT_DECODE_PIXELS
    max_uploads: int = DEFAULT_MAX_UPLOADS
    uploads: UploadStats = field(default_factory=UploadStats)
    # Set when the server begins to shut down: bodies still arriving are answered 503 at once.
    stopping: bool = False

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def too_large(self) -> HTTPException:
        return HTTPException(413, f"upload too large: the limit is {self.max_upload_mb:g} MB")

    def decision_of(self, value: str | None) -> str:
        """The request's decision rule, checked (422 for an unknown one, or "balanced" without offsets)."""
        try:
            return self.recognizer.check_decision(value)
        except MsferError as error:
            raise HTTPException(422, str(error)) from None


def create_app(
    recognizer: EmotionRecognizer | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT_S,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    memory_budget_mb: float | None = DEFAULT_MEMORY_BUDGET_MB,
    decode_pixels: int = DEFAULT_DECODE_PIXELS,
    max_uploads: int = DEFAULT_MAX_UPLOADS,
) -> FastAPI:
    """The FastAPI app around ``recognizer`` (default: the bundled model on the CPU), with the limits and browser
    rules of the module docstring."""
    from .._version import __version__

    if (upload_timeout <= 0 or decode_pixels < 1 or max_uploads < 1
            or (memory_budget_mb is not None and memory_budget_mb <= 0)):
        raise ValueError("upload_timeout, decode_pixels, max_uploads and memory_budget_mb must be positive")
    service = Service(recognizer or EmotionRecognizer(), max_upload_mb, max_pixels, max_concurrent, max_queue,
                      InferenceGate(max_concurrent, max_queue, memory_budget_mb), upload_timeout, decode_pixels,
                      max_uploads)
    app = FastAPI(title="msfer", version=__version__, description="Facial emotion recognition",
                  docs_url=None, redoc_url=None)
    app.state.service, app.state.gate = service, service.gate
    app.add_exception_handler(Exception, internal_error)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/sample.jpg", sample, methods=["GET"])
    app.add_api_route("/v1/predict", predict, methods=["POST"], openapi_extra=UPLOAD_SCHEMA, response_model=None)
    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    if SWAGGER_DIR is not None:
        app.mount("/static/swagger-ui", StaticFiles(directory=SWAGGER_DIR), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if allowed_origins:
        origins = ["*"] if "*" in allowed_origins else [normal_origin(origin) for origin in allowed_origins]
        app.add_middleware(CORSMiddleware, allow_origins=origins,
                           allow_methods=["GET", "POST"], allow_headers=["content-type"])
    app.add_middleware(BrowserGuard, hosts=AllowedHosts(allowed_hosts), origins=list(allowed_origins))
    return app


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    # Without this, Starlette answers an unexpected error in plain text. Its answer passes no middleware, so it
    # carries the security headers itself.
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(error).__name__}); the server log has the details"},
                        status_code=500, headers=SECURITY_HEADERS)


def healthz(request: Request) -> dict:
    from .._version import __version__

    service = request.app.state.service
    recognizer = service.recognizer
    uploads = service.uploads
    return {"status": "ok", "version": __version__, "model": recognizer.model_name,
            "backend": recognizer.classifier.kind,
            "max_upload_mb": service.max_upload_mb, "max_pixels": service.max_pixels,
            "max_concurrent": service.max_concurrent, "max_queue": service.max_queue,
            "upload_timeout_s": service.upload_timeout, "max_uploads": service.max_uploads,
            "in_flight": service.gate.admitted,
            "uploads": {"receiving": uploads.receiving, "timed_out": uploads.timed_out,
                        "disconnected": uploads.disconnected},
            "memory_budget_mb": service.gate.memory_mb, "memory_reserved_mb": round(service.gate.reserved_mb),
            "decode_pixels": service.decode_pixels,
            "min_face": recognizer.min_face, "decision": recognizer.decision,
            "balanced_decision": has_balanced_rule(recognizer.classifier.balanced_offsets, recognizer.calibration),
            "calibration": recognizer.calibration, "calibration_note": calibration_sentence(recognizer.calibration),
            "uncertain_below": DEFAULT_UNCERTAIN_BELOW}


def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def sample() -> FileResponse:
    return FileResponse(SAMPLE_PHOTO, media_type="image/jpeg")


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>msfer API</title>
<link rel="stylesheet" href="static/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="static/swagger-ui/swagger-ui-bundle.js"></script>
<script src="static/docs.js"></script>
</body>
</html>
"""


def docs() -> Response:
    """Swagger UI for the API, from local files; every address relative, so it works under a proxy's sub-path."""
    if SWAGGER_DIR is None:
        return JSONResponse({"detail": "the API page needs the package fastapi-offline: pip install 'msfer[serve]'"},
                            status_code=503)
    return HTMLResponse(DOCS_PAGE)


_RULES = {"type": "string", "enum": ["argmax", "balanced"],
          "description": "decision rule: argmax (the most probable emotion) or balanced; default the service's"}
UPLOAD_SCHEMA = {"parameters": [{"name": "decision", "in": "query", "required": False, "schema": _RULES}],
                 "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary",
                  "description": "the photo (JPEG, PNG, WebP, BMP, TIFF, ...)"},
        "decision": _RULES,
    }}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}


async def predict(request: Request) -> Response | dict:
    service: Service = request.app.state.service
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.max_bytes:
        raise service.too_large()  # before reading anything
    query_decision = service.decision_of(request.query_params.get("decision"))
    if service.uploads.receiving >= service.max_uploads:
        raise HTTPException(503, f"busy: {service.max_uploads} uploads are arriving at once; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    body = await receive_body(request, service)
    if body is None:  # the client went away: nobody reads an answer
        return Response(status_code=400)
    name, data, form_decision = await upload_of(request, body)
    decision = service.decision_of(form_decision) if form_decision is not None else query_decision
    # Only now, with the whole body here, does the request take a place: a slow upload holds none.
    if not service.gate.enter():
        raise HTTPException(503, f"busy: {service.gate.capacity} requests are being served or waiting; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        return await run_in_threadpool(recognise, service, name, data, decision)
    finally:
        service.gate.leave()


async def receive_body(request: Request, service: Service) -> bytes | None:
    """The request body, within ``upload_timeout`` (408 past it; 503 once the server is stopping); None when the
    client disconnected before sending all of it (logged as one INFO line)."""
    received = [0]
    reading = asyncio.ensure_future(read_body(request, service, received))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.upload_timeout
    service.uploads.receiving += 1
    try:
        while not reading.done() and not service.stopping and loop.time() < deadline:
            await asyncio.wait({reading}, timeout=min(0.25, max(deadline - loop.time(), 0)))
    except BaseException:
        reading.cancel()
        raise
    finally:
        service.uploads.receiving -= 1
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    if reading.done():
        try:
            return reading.result()
        except ClientDisconnect:
            service.uploads.disconnected += 1
            log.info("%s disconnected during its upload to %s after %s bytes; nothing was recognised",
                     client, request.url.path, f"{received[0]:,}")
            return None
    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError, ClientDisconnect):
        await reading
    if service.stopping:
        raise HTTPException(503, "the server is shutting down; send the request again",
                            headers={"Connection": "close", "Retry-After": str(RETRY_AFTER_S)})
    service.uploads.timed_out += 1
    log.info("%s: upload to %s timed out after %g s with %s bytes received", client, request.url.path,
             service.upload_timeout, f"{received[0]:,}")
    raise HTTPException(408, f"upload too slow: the request body did not arrive within {service.upload_timeout:g} s "
                             f"({received[0]:,} bytes came); send it again over a faster link",
                        headers={"Connection": "close"})


async def read_body(request: Request, service: Service, received: list[int]) -> bytes:
    """The request body, refused (413) as soon as it passes the upload limit; ``received[0]`` counts its bytes."""
    chunks = []
    async for chunk in request.stream():
        received[0] += len(chunk)
        if received[0] > service.max_bytes:  # a chunked body has no Content-Length: stop reading it here
            raise service.too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def upload_of(request: Request, body: bytes) -> tuple[str, bytes, str | None]:
    """(file name, bytes, decision field) of the image: multipart field ``image`` or ``file``, else the raw body."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        # Any declared type: curl --data-binary labels a photo x-www-form-urlencoded, and the bytes decide anyway.
        if not body:
            raise HTTPException(
                422, "no image: send it in the multipart field 'image' (curl -F image=@photo.jpg ...) "
                     "or as the request body (curl --data-binary @photo.jpg ...)")
        return "upload", body, None

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        # More files than one are parsed (max_upload_mb bounds them) so that they get "one image per request".
        form = await Request(request.scope, replay).form(max_files=16, max_fields=16)
    except MultiPartException as error:
        raise HTTPException(400, f"malformed multipart body: {error.message}") from None
    try:
        uploads = [value for name in FIELD_NAMES for value in form.getlist(name) if isinstance(value, UploadFile)]
        if len(uploads) > 1:  # using one and dropping the others would answer for a photo the client did not mean
            raise HTTPException(400, f"one image per request: got {len(uploads)} files in the fields "
                                     f"{' / '.join(repr(name) for name in FIELD_NAMES)}; send one request each")
        upload = uploads[0] if uploads else None
        if upload is None:
            raise HTTPException(422, "no image: send it in the multipart field 'image' as a file "
                                     "(curl -F image=@photo.jpg ...)")
        decision = form.get("decision")
        return upload.filename or "upload", await upload.read(), decision if isinstance(decision, str) else None
    finally:
        await form.close()


def recognise(service: Service, name: str, data: bytes, decision: str) -> dict:
    """Decode and recognise, in a worker thread, holding one of the gate's slots and its memory estimate."""
    max_pixels = service.max_pixels
    if not data:
        raise HTTPException(400, f"{name}: empty file (0 bytes)")
    try:
        with tempfile.NamedTemporaryFile() as stored:
            stored.write(data)
            stored.flush()
            width, height, frames = image_size(stored.name, name, max_pixels)
            estimate = estimated_mb(width, height, service.recognizer, service.decode_pixels)
            with service.gate.slots, service.gate.memory(estimate):
                image = decode_reduced(stored.name, name, width, height, service.decode_pixels)
                original = upright_size(image, width, height)
                scale_x, scale_y = original[0] / image.width, original[1] / image.height
                recognizer = detecting_at(service.recognizer, (scale_x + scale_y) / 2)
                faces = recognizer.predict(image, decision=decision)
                del image
        thresholds = getattr(service.recognizer, "quality", None)
        answer = {"source": name, "width": original[0], "height": original[1], "decision": decision,
                  "faces": [in_original_pixels(face, scale_x, scale_y, original, thresholds) for face in faces]}
        if frames > 1:  # an animated or multi-page image: said in the answer, not only in the server's log
            answer["warning"] = (f"{name}: only the first of its {frames} frames was read (msfer predict reads "
                                 "every frame)")
        return answer
    finally:
        release_memory()
