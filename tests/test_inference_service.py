"""The REST service (FastAPI's test client) and its web page end to end in headless Chromium."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from msfer.inference.recognizer import EmotionRecognizer

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from msfer.inference.service import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(random_weights) -> TestClient:
    return TestClient(create_app(EmotionRecognizer(random_weights), max_upload_mb=1.0))


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def test_health_page_and_sample(client):
    assert client.get("/healthz").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "<canvas" in page.text and 'src="static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200 and 'fetch("v1/predict"' in script.text
    sample = client.get("/sample.jpg")
    assert sample.status_code == 200 and sample.content[:2] == b"\xff\xd8"


def encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def multipart(field: str, filename: bytes, data: bytes, content_type: bytes | None = None) -> tuple[bytes, dict]:
    """A multipart body with one file part, built byte by byte (any file name, with or without a part type)."""
    boundary = b"msfer-test-boundary"
    part_type = b"" if content_type is None else b"Content-Type: " + content_type + b"\r\n"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + field.encode() + b"\"; filename=\""
            + filename + b"\"\r\n" + part_type + b"\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    return body, {"content-type": "multipart/form-data; boundary=" + boundary.decode()}


def test_predict_returns_the_faces(client, astronaut):
    response = client.post("/v1/predict", files={"image": ("astronaut.jpg", jpeg(astronaut), "image/jpeg")})
    assert response.status_code == 200
    result = response.json()
    assert (result["source"], result["width"], result["height"]) == ("astronaut.jpg", 512, 512)
    assert len(result["faces"]) == 1
    assert set(result["faces"][0]) == {"box", "score", "landmarks", "regions", "probs", "label", "confidence",
                                       "decision", "face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"}
    grey = jpeg(np.full((64, 64, 3), 128, np.uint8))
    no_face = client.post("/v1/predict", files={"image": ("grey.jpg", grey, "image/jpeg")})
    assert no_face.status_code == 200 and no_face.json()["faces"] == []


def test_the_image_is_judged_by_its_bytes_not_its_declared_type(client, astronaut):
    expected = client.post("/v1/predict", files={"image": ("a.jpg", jpeg(astronaut), "image/jpeg")}).json()["faces"]
    uploads = {
        "field file, the old name": ("file", b"a.jpg", jpeg(astronaut), b"image/jpeg"),
        "no part type (requests' default)": ("image", b"a.jpg", jpeg(astronaut), None),
        "application/octet-stream": ("image", b"a.jpg", jpeg(astronaut), b"application/octet-stream"),
        "a JPEG named .txt, typed text/plain": ("image", b"a.txt", jpeg(astronaut), b"text/plain"),
        "WebP": ("image", b"a.webp", encoded(astronaut, "WEBP", quality=95), b"application/octet-stream"),
        "BMP": ("image", b"a.bmp", encoded(astronaut, "BMP"), b"image/bmp"),
        "PNG with a 300-character extension": ("image", b"a." + b"x" * 300, encoded(astronaut, "PNG"), b"image/png"),
        "a NUL byte in the file name": ("image", b"a\x00b.jpg", jpeg(astronaut), b"image/jpeg"),
    }
    for what, (field, filename, data, content_type) in uploads.items():
        body, headers = multipart(field, filename, data, content_type)
        response = client.post("/v1/predict", content=body, headers=headers)
        assert response.status_code == 200, (what, response.text)
        faces = response.json()["faces"]
        assert len(faces) == 1 and np.allclose(faces[0]["box"], expected[0]["box"], atol=3), what
    raw = client.post("/v1/predict", content=encoded(astronaut, "PNG"),
                      headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 200 and raw.json()["source"] == "upload" and len(raw.json()["faces"]) == 1
    thin = client.post("/v1/predict", files={"image": ("thin.png", encoded(np.zeros((1, 1600, 3), np.uint8), "PNG"))})
    assert thin.status_code == 200 and thin.json()["faces"] == []


def test_a_raw_body_is_the_image_whatever_its_declared_type(client, astronaut):
    # curl --data-binary @photo.jpg, as docs/service.md shows it, declares application/x-www-form-urlencoded.
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "image/png", None):
        headers = {} if content_type is None else {"content-type": content_type}
        response = client.post("/v1/predict", content=jpeg(astronaut), headers=headers)
        assert response.status_code == 200, (content_type, response.text)
        assert response.json()["source"] == "upload" and len(response.json()["faces"]) == 1, content_type
    not_image = client.post("/v1/predict", content=b"image=%40photo.jpg",
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert not_image.status_code == 415 and "upload: not an image" in not_image.json()["detail"]
    empty = client.post("/v1/predict", content=b"", headers={"content-type": "application/x-www-form-urlencoded"})
    assert empty.status_code == 422 and "--data-binary" in empty.json()["detail"]


def test_two_images_in_one_request_are_refused_not_one_dropped(client, astronaut):
    photo = jpeg(astronaut)
    for fields in (["image", "image"], ["image", "file"], ["file", "file", "image"]):
        files = [(field, (f"{index}.jpg", photo, "image/jpeg")) for index, field in enumerate(fields)]
        response = client.post("/v1/predict", files=files)
        assert response.status_code == 400, (fields, response.text)
        assert "one image per request" in response.json()["detail"] and str(len(fields)) in response.json()["detail"]
    # Files in other fields are not images to recognise, so one 'image' beside them is still answered.
    beside = client.post("/v1/predict", files=[("image", ("a.jpg", photo, "image/jpeg")),
                                                ("notes", ("n.txt", b"hello", "text/plain"))])
    assert beside.status_code == 200 and beside.json()["source"] == "a.jpg"


def test_bad_uploads_get_clear_json_errors(client, astronaut):
    def error(response, status: int, *words: str) -> None:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert all(word in response.json()["detail"] for word in words), response.json()

    error(client.post("/v1/predict", files={"image": ("notes.txt", b"hello", "text/plain")}), 415, "notes.txt",
          "not an image")
    error(client.post("/v1/predict", files={"image": ("photo.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg")}), 415)
    truncated = jpeg(astronaut)[:3000]
    error(client.post("/v1/predict", files={"image": ("cut.jpg", truncated, "image/jpeg")}), 400, "cut.jpg",
          "cannot decode")
    error(client.post("/v1/predict", files={"image": ("empty.png", b"", "image/png")}), 400, "empty")
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)  # ~1.5 MB as JPEG
    error(client.post("/v1/predict", files={"image": ("big.jpg", jpeg(noise, 95), "image/jpeg")}), 413, "1 MB")
    error(client.post("/v1/predict"), 422, "image")  # nothing sent
    # A body that is no multipart form is the image, so a form's text is judged by its bytes too.
    error(client.post("/v1/predict", data={"image": "not a file"}), 415, "upload", "not an image")
    other_field = client.post("/v1/predict", data={"image": "not a file"}, files={"photo": ("a.jpg", jpeg(astronaut))})
    error(other_field, 422, "'image'")
    error(client.post("/v1/predict", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}), 400)
    error(client.get("/v1/predict"), 405)
    error(client.get("/no/such/page"), 404)


def test_an_unexpected_failure_is_a_json_500(recognizer, astronaut):
    class Failing:
        classifier, min_face, decision = recognizer.classifier, recognizer.min_face, recognizer.decision
        calibration, check_decision = recognizer.calibration, recognizer.check_decision
        model_name = recognizer.model_name

        def predict(self, image, decision=None):
            raise RuntimeError("the model broke")

    client = TestClient(create_app(Failing()), raise_server_exceptions=False)
    response = client.post("/v1/predict", files={"image": ("a.jpg", jpeg(astronaut), "image/jpeg")})
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert "RuntimeError" in response.json()["detail"]


def sparse_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height pixels in a few kB (all black)."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def test_images_over_the_pixel_limit_are_refused_before_decoding(recognizer):
    huge = sparse_png(12000, 12000)  # 144 MP in about 20 KB
    assert len(huge) < 100_000
    client = TestClient(create_app(recognizer))  # the default limit
    response = client.post("/v1/predict", files={"image": ("huge.png", huge, "image/png")})
    assert response.status_code == 413 and "12000 x 12000" in response.json()["detail"]
    assert "40,000,000" in response.json()["detail"]

    small_limit = TestClient(create_app(recognizer, max_pixels=1_000_000))
    assert small_limit.get("/healthz").json()["max_pixels"] == 1_000_000
    ok = small_limit.post("/v1/predict", files={"image": ("ok.png", sparse_png(1000, 1000), "image/png")})
    assert ok.status_code == 200
    # The header alone decides: a file whose pixel data is cut off is refused as too large, not as corrupt.
    over = sparse_png(1001, 1000)
    refused = small_limit.post("/v1/predict", files={"image": ("over.png", over[: len(over) // 2], "image/png")})
    assert refused.status_code == 413 and "1001 x 1000" in refused.json()["detail"]


def test_a_chunked_body_is_cut_off_at_the_limit_while_it_is_read(recognizer):
    app = create_app(recognizer, max_upload_mb=1.0)
    chunk, chunks = b"\x00" * 65536, 1000  # 64 MB offered, without Content-Length
    pulled, sent = 0, []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunk, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x"), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    assert start["status"] == 413 and "1 MB" in json.loads(body)["detail"]
    assert pulled <= 1024 * 1024 // len(chunk) + 1  # stopped reading just past 1 MB of the 64 offered


def test_a_full_queue_answers_503_with_retry_after(recognizer, astronaut):
    class Held:
        """The real recognizer, each call held until the test releases it."""

        classifier, min_face, decision = recognizer.classifier, recognizer.min_face, recognizer.decision
        calibration, check_decision = recognizer.calibration, recognizer.check_decision
        model_name = recognizer.model_name

        def __init__(self) -> None:
            self.entered, self.release = threading.Semaphore(0), threading.Event()

        def predict(self, image, decision=None):
            self.entered.release()
            assert self.release.wait(60)
            return recognizer.predict(image, decision=decision)

    held = Held()
    client = TestClient(create_app(held, max_concurrent=1, max_queue=1))
    upload = {"image": ("a.jpg", jpeg(astronaut), "image/jpeg")}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/v1/predict", files=upload)
        assert held.entered.acquire(timeout=60)  # the first request is being recognised
        waiting = pool.submit(client.post, "/v1/predict", files=upload)
        deadline = time.monotonic() + 60
        while client.get("/healthz").json()["in_flight"] < 2:  # the second has taken the queue's place
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = client.post("/v1/predict", files=upload)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert "busy" in refused.json()["detail"]
        held.release.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert client.get("/healthz").json()["in_flight"] == 0
    assert client.post("/v1/predict", files=upload).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(weights, tmp_path):
    """``msfer serve --weights weights`` on a free port for the block; yields (its address, its log file)."""
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    log = log_path.open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "msfer.cli", "serve", "--port", str(port), "--weights", str(weights)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        import httpx

        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/", log_path
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_web_page_in_headless_chromium(random_weights, tmp_path, open_page):
    """The page, opened with ?demo=1, uploads its sample photo and draws a box round the face."""
    screenshot = tmp_path / "page.png"
    with served(random_weights, tmp_path) as (address, log_path):
        page = open_page(address + "?demo=1")
        assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")
        page.screenshot(path=screenshot)
    assert "POST /v1/predict HTTP/1.1\" 200" in log_path.read_text()  # the page uploaded the sample, got its faces
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    box_green = (pixels[..., 0] < 40) & (pixels[..., 1] > 180) & (pixels[..., 2] < 40)
    box_orange = (pixels[..., 0] > 230) & (np.abs(pixels[..., 1] - 140) < 25) & (pixels[..., 2] < 40)
    assert box_green.sum() + box_orange.sum() > 200, "no face box was drawn on the page"


@pytest.mark.slow
def test_web_page_shows_decision_quality_and_calibration(random_weights, tmp_path, open_page):
    """The page sends the decision rule chosen on it, and shows each face's reading, quality and the calibration."""
    from msfer.engine.calibration import calibrated_checkpoint
    from msfer.labels import EMOTIONS
    from msfer.model.checkpoint import load_checkpoint, save_checkpoint

    offsets = np.zeros(len(EMOTIONS))
    offsets[EMOTIONS.index("fear")] = 50.0  # under the balanced rule every face reads fear
    held_out = {"n": 1794, "ece": 0.031, "nll": 0.91, "brier": 0.44}
    record = {"method": "temperature", "held_out": {"calibrated": held_out}}
    weights = save_checkpoint(calibrated_checkpoint(load_checkpoint(random_weights), [1.0] * 7, [0.0] * 7,
                                                    list(offsets - offsets.mean()), record), tmp_path / "balanced.pt")
    with served(weights, tmp_path) as (address, log_path):
        pages = {rule: open_page(f"{address}?demo=1&decision={rule}").content() for rule in ("argmax", "balanced")}
        # an unknown rule in the address falls back to the service's, never an upload the service refuses
        unknown = open_page(f"{address}?demo=1&decision=bogus").content()
        server_log = log_path.read_text()
    for rule, dom in pages.items():
        status = dom.split('id="status"')[1].split("</p>")[0]
        assert f"(decision: {rule})" in status, (status, server_log)
        for header in ("quality", "size (px)", "sharpness", "roll", "yaw", "reading"):
            assert f">{header}</th>" in dom
        assert "calibrated (temperature scaling)" in dom  # the service's calibration note
    assert "fear" in pages["balanced"].split('id="status"')[1].split("</p>")[0]
    assert "(decision: argmax)" in unknown.split('id="status"')[1].split("</p>")[0]
    assert any(quality in pages["argmax"] for quality in (">good", ">low"))


def face_on_canvas(astronaut: np.ndarray, width: int, height: int, at: tuple[int, int]) -> np.ndarray:
    """A flat grey ``width`` x ``height`` photo with the astronaut, twice her size, pasted at ``at`` (x, y)."""
    canvas = np.full((height, width, 3), 120, np.uint8)
    big = np.asarray(Image.fromarray(astronaut).resize((1024, 1024)))
    x, y = at
    canvas[y : y + 1024, x : x + 1024] = big[: height - y, : width - x]
    return canvas


def test_a_large_image_is_decoded_reduced_and_answered_in_its_own_pixels(recognizer, astronaut, tmp_path):
    from msfer.inference.service_images import decode_reduced

    square = face_on_canvas(astronaut, 3000, 3000, (1500, 1200))
    # Stored turned, with EXIF orientation 6: upright it is 2000 wide and 3000 tall.
    upright = face_on_canvas(astronaut, 2000, 3000, (700, 1500))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(turned, "JPEG", quality=95, exif=exif)
    uploads = {"square.png": (encoded(square, "PNG"), square), "square.jpg": (jpeg(square, 95), square),
               "turned.jpg": (turned.getvalue(), upright)}
    client = TestClient(create_app(recognizer, decode_pixels=4_000_000))  # these 6-9 MP images: decoded at half size
    for name, (data, full) in uploads.items():
        (tmp_path / name).write_bytes(data)
        stored = Image.open(tmp_path / name).size
        decoded = decode_reduced(str(tmp_path / name), name, *stored, decode_pixels=4_000_000)
        assert decoded.size == (full.shape[1] // 2, full.shape[0] // 2), name  # a quarter of the pixels
        expected = recognizer.predict(full)  # the whole pipeline at full size
        answer = client.post("/v1/predict", files={"image": (name, data)})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["width"], result["height"]) == (full.shape[1], full.shape[0]), name
        assert len(result["faces"]) == len(expected) == 1, name
        face, reference = result["faces"][0], expected[0]
        side = reference.box[2] - reference.box[0]  # about 190 px
        assert np.allclose(face["box"], reference.box, atol=0.03 * side), (name, face["box"], reference.box)
        assert np.allclose(face["landmarks"], reference.landmarks, atol=0.03 * side), name
        assert abs(face["face_size"] - reference.face_size) < 0.03 * side, name
        assert face["quality_issues"] == reference.quality_issues, name
        for region, box in face["regions"].items():
            assert np.allclose(box, reference.regions[region], atol=0.1 * side), (name, region)
    # Within the limit nothing changes: the same answer as before, to the decimal.
    small = TestClient(create_app(recognizer)).post("/v1/predict", files={"image": ("s.png", encoded(square, "PNG"))})
    full_size = recognizer.predict(square)[0]
    assert small.json()["faces"][0]["box"] == full_size.box


def test_the_memory_budget_runs_requests_together_only_while_their_estimates_fit(recognizer):
    from msfer.inference.service import Service
    from msfer.inference.service_guards import InferenceGate
    from msfer.inference.service_images import estimated_mb

    gate = InferenceGate(2, 0, memory_mb=1000)
    holding, released, second_in = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with gate.memory(600):
            holding.set()
            released.wait(30)

    def second() -> None:
        with gate.memory(600):
            second_in.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert holding.wait(30)
    threads[1].start()
    assert not second_in.wait(0.5) and gate.reserved_mb == 600  # 600 + 600 is over the budget: it waits
    released.set()
    assert second_in.wait(30)
    for thread in threads:
        thread.join(30)
    assert gate.reserved_mb == 0
    with gate.memory(5000):  # alone, a request over the whole budget still runs
        assert gate.reserved_mb == 5000
    # Under the default budget two of the largest images (40 MP) are recognised one after the other, two 12 MP
    # phone photos together.
    service = TestClient(create_app(recognizer)).app.state.service
    assert isinstance(service, Service) and service.gate.memory_mb == 1000
    def estimate(width: int, height: int) -> float:
        return estimated_mb(width, height, service.recognizer, service.decode_pixels)

    assert 2 * estimate(7300, 5470) > 1000 > 2 * estimate(4000, 3000)


def test_an_animated_upload_is_read_from_its_first_frame_and_the_answer_says_so(client, astronaut):
    buffer = io.BytesIO()
    frames = [Image.fromarray(astronaut), Image.fromarray(np.full_like(astronaut, 90))]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=[100, 100])
    answer = client.post("/v1/predict", files={"image": ("reaction.gif", buffer.getvalue(), "image/gif")}).json()
    assert len(answer["faces"]) == 1  # the first frame's face
    assert answer["warning"] == ("reaction.gif: only the first of its 2 frames was read "
                                 "(msfer predict reads every frame)")
    still = client.post("/v1/predict", files={"image": ("a.jpg", jpeg(astronaut), "image/jpeg")}).json()
    assert "warning" not in still
