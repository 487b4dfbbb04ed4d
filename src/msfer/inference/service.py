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
  ``in_flight`` (the requests being served or waiting), the decision rules the model offers,
  its calibration figures and ``calibration_note`` (the report's sentence on them), and
  ``uncertain_below``, the report's threshold under which a label counts as uncertain.
* ``GET /``: a page to upload a photo and see it annotated (drawn in the browser
  from the JSON): each face's label, probabilities and quality, the decision rule chosen on
  the page, labels below ``uncertain_below`` marked uncertain and low-quality faces marked as
  such. ``/?demo=1`` runs it on ``GET /sample.jpg``, the bundled sample
  (``&decision=balanced`` to start with that rule).

Limits, each answered with a JSON ``{"detail": "..."}`` error, as every error is:

* **upload size** (``max_upload_mb``, the whole request body): 413, from
  ``Content-Length`` before anything is read, and counted while the body is read, so
  a body sent without ``Content-Length`` (chunked) is cut off as soon as it passes the
  limit, never stored in full;
* **pixels** (``max_pixels``, width x height as the file's header declares them): 413,
  checked before decoding, since a small file can declare a huge image (a 140 KB PNG
  of 12000 x 12000 decodes to 430 MB);
* **concurrency**: ``max_concurrent`` requests decode and infer at once, ``max_queue``
  more wait for a turn; beyond that 503 with ``Retry-After``;
* a body that is not an image 415, an image that cannot be decoded (truncated,
  corrupt, empty) 400, two images in one request 400, no image at all 422, any
  unexpected failure 500.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from ..data.images import UnreadableImageError, load_rgb
from ..engine.decision import has_balanced_rule
from ..errors import MsferError
from .recognizer import EmotionRecognizer
from .report import DEFAULT_UNCERTAIN_BELOW, calibration_sentence

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10.0
# 40 MP holds any phone or DSLR photo (24-36 MP typical); decoding one takes about 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_MAX_QUEUE = 8
RETRY_AFTER_S = 2
FIELD_NAMES = ("image", "file")
STATIC_DIR = Path(__file__).with_name("static")
SAMPLE_IMAGE = Path(__file__).parents[1] / "samples" / "astronaut.jpg"


class InferenceGate:
    """At most ``slots`` requests decode and infer at once and ``queue`` more wait; :meth:`enter` refuses the rest.

    Thread-based (not asyncio), so it holds whatever event loop or thread a request runs in.
    """

    def __init__(self, slots: int, queue: int) -> None:
        if slots < 1 or queue < 0:
            raise ValueError(f"need at least 1 concurrent slot and a queue of 0 or more, got {slots} and {queue}")
        self.slots = threading.BoundedSemaphore(slots)
        self.capacity = slots + queue
        self.admitted = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Take a place (running or waiting); False when all places are taken."""
        with self._lock:
            if self.admitted >= self.capacity:
                return False
            self.admitted += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.admitted -= 1


@dataclass
class Service:
    """What the handlers share: the recognizer, the limits and the gate (``app.state.service``)."""

    recognizer: EmotionRecognizer
    max_upload_mb: float
    max_pixels: int
    max_concurrent: int
    max_queue: int
    gate: InferenceGate

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
) -> FastAPI:
    """The FastAPI app around ``recognizer`` (default: the bundled model on the CPU), with the limits above."""
    from .._version import __version__

    service = Service(recognizer or EmotionRecognizer(), max_upload_mb, max_pixels, max_concurrent, max_queue,
                      InferenceGate(max_concurrent, max_queue))
    app = FastAPI(title="msfer", version=__version__, description="Facial emotion recognition")
    app.state.service, app.state.gate = service, service.gate
    app.add_exception_handler(Exception, internal_error)
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/sample.jpg", sample, methods=["GET"])
    app.add_api_route("/v1/predict", predict, methods=["POST"], openapi_extra=UPLOAD_SCHEMA)
    return app


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    # Without this, Starlette answers an unexpected error in plain text.
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(error).__name__}); the server log has the details"},
                        status_code=500)


def healthz(request: Request) -> dict:
    from .._version import __version__

    service = request.app.state.service
    recognizer = service.recognizer
    return {"status": "ok", "version": __version__, "backend": type(recognizer.classifier).__name__,
            "max_upload_mb": service.max_upload_mb, "max_pixels": service.max_pixels,
            "max_concurrent": service.max_concurrent, "max_queue": service.max_queue,
            "in_flight": service.gate.admitted, "min_face": recognizer.min_face, "decision": recognizer.decision,
            "balanced_decision": has_balanced_rule(recognizer.classifier.balanced_offsets, recognizer.calibration),
            "calibration": recognizer.calibration, "calibration_note": calibration_sentence(recognizer.calibration),
            "uncertain_below": DEFAULT_UNCERTAIN_BELOW}


def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def sample() -> FileResponse:
    return FileResponse(SAMPLE_IMAGE, media_type="image/jpeg")


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


async def predict(request: Request) -> dict:
    service: Service = request.app.state.service
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.max_bytes:
        raise service.too_large()  # before taking a place in the queue
    if not service.gate.enter():
        raise HTTPException(503, f"busy: {service.gate.capacity} requests are being served or waiting; retry shortly",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        query_decision = service.decision_of(request.query_params.get("decision"))
        name, data, form_decision = await upload_of(request, await read_body(request, service))
        decision = service.decision_of(form_decision) if form_decision is not None else query_decision
        return await run_in_threadpool(recognise, service, name, data, decision)
    finally:
        service.gate.leave()


async def read_body(request: Request, service: Service) -> bytes:
    """The request body, refused (413) as soon as it passes the upload limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > service.max_bytes:
        raise service.too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > service.max_bytes:  # a chunked body has no Content-Length: stop reading it here
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
    """Decode and recognise, in a worker thread, holding one of the gate's slots."""
    max_pixels = service.max_pixels
    if not data:
        raise HTTPException(400, f"{name}: empty file (0 bytes)")
    with service.gate.slots, tempfile.NamedTemporaryFile() as stored:
        stored.write(data)
        stored.flush()
        try:
            with Image.open(stored.name) as header:  # lazy: reads the size, decodes nothing
                width, height = header.size
        except UnidentifiedImageError:
            raise HTTPException(415, f"{name}: not an image (the bytes are no format Pillow decodes, "
                                     "e.g. JPEG, PNG, WebP, BMP, TIFF)") from None
        except Image.DecompressionBombError:
            raise HTTPException(413, f"{name}: image too large: over {max_pixels:,} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise HTTPException(400, f"{name}: cannot decode image ({error})") from None
        if width * height > max_pixels:
            raise HTTPException(413, f"{name}: image too large: {width} x {height} = {width * height:,} pixels, "
                                     f"the limit is {max_pixels:,}")
        try:
            # load_rgb applies msfer's decoding rules (EXIF rotation, alpha on white, 16-bit).
            image = load_rgb(stored.name)
        except UnreadableImageError as error:
            raise HTTPException(400, str(error).replace(stored.name, name)) from None
        faces = service.recognizer.predict(image, decision=decision)
    return {"source": name, "width": image.width, "height": image.height, "decision": decision,
            "faces": [f.to_dict() for f in faces]}
