"""``msfer serve``: the REST service and its web page.

* ``POST /v1/predict``: a multipart upload (field ``file``) of one image; answers
  ``{"source", "width", "height", "faces": [...]}`` with faces as ``msfer predict``
  writes them. Too large an upload is 413 (checked on ``Content-Length`` before the
  body is read, and on the received size), a non-image content type 415, an image
  that cannot be decoded 400; every error is JSON ``{"detail": "..."}``.
* ``GET /healthz``: ``{"status": "ok", ...}`` once the model is loaded.
* ``GET /``: a page to upload a photo and see it annotated (drawn in the browser
  from the JSON). ``/?demo=1`` runs it on ``GET /sample.jpg``, the bundled sample.

The recognizer is thread-safe for inference, so the endpoint is a plain function
that FastAPI runs in its thread pool.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from ..data.images import UnreadableImageError, load_rgb
from .options import add_model_arguments, model_options
from .recognizer import EmotionRecognizer

DEFAULT_MAX_UPLOAD_MB = 10.0
STATIC_DIR = Path(__file__).with_name("static")
SAMPLE_IMAGE = Path(__file__).parents[1] / "samples" / "astronaut.jpg"


def create_app(recognizer: EmotionRecognizer | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> FastAPI:
    """The FastAPI app around ``recognizer`` (default: the bundled model on the CPU)."""
    from .._version import __version__

    recognizer = recognizer or EmotionRecognizer()
    max_bytes = int(max_upload_mb * 1024 * 1024)
    app = FastAPI(title="msfer", version=__version__, description="Facial emotion recognition")

    def too_large() -> HTTPException:
        return HTTPException(413, f"upload too large: the limit is {max_upload_mb:g} MB")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # Before the multipart body is parsed (and spooled to disk), so a huge upload costs nothing.
        declared = request.headers.get("content-length")
        if request.url.path == "/v1/predict" and declared and declared.isdigit() and int(declared) > max_bytes:
            return JSONResponse({"detail": too_large().detail}, status_code=413)
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__, "backend": type(recognizer.classifier).__name__,
                "max_upload_mb": max_upload_mb}

    @app.get("/", response_class=HTMLResponse)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/sample.jpg")
    def sample() -> FileResponse:
        return FileResponse(SAMPLE_IMAGE, media_type="image/jpeg")

    @app.post("/v1/predict")
    def predict(file: UploadFile = File(..., description="the image: JPEG, PNG, WebP, BMP, TIFF, ...")) -> dict:
        name = file.filename or "upload"
        if not (file.content_type or "").startswith("image/"):
            raise HTTPException(415, f"{name}: content type {file.content_type!r} is not an image (expected image/*)")
        if file.size is not None and file.size > max_bytes:
            raise too_large()
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as stored:
            # load_rgb applies msfer's decoding rules (EXIF rotation, alpha on white, 16-bit, bomb guard).
            shutil.copyfileobj(file.file, stored)
            stored.flush()
            try:
                image = load_rgb(stored.name)
            except UnreadableImageError as error:
                raise HTTPException(400, str(error).replace(stored.name, name)) from None
        faces = recognizer.predict(image)
        return {"source": name, "width": image.width, "height": image.height, "faces": [f.to_dict() for f in faces]}

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB; larger ones get 413 (default {DEFAULT_MAX_UPLOAD_MB:g})")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    recognizer = EmotionRecognizer(**model_options(args))
    print(f"msfer serve: open http://{args.host}:{args.port}/ (Ctrl+C stops)")
    uvicorn.run(create_app(recognizer, args.max_upload_mb), host=args.host, port=args.port)
    return 0
