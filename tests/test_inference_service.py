"""The REST service (FastAPI's test client) and its web page end to end in headless Chromium."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from msfer.inference.recognizer import EmotionRecognizer


pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from msfer.inference.service import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
    assert "/v1/predict" in page.text and "<canvas" in page.text
    sample = client.get("/sample.jpg")
    assert sample.status_code == 200 and sample.content[:2] == b"\xff\xd8"


def test_predict_returns_the_faces(client, astronaut):
    response = client.post("/v1/predict", files={"file": ("astronaut.jpg", jpeg(astronaut), "image/jpeg")})
    assert response.status_code == 200
    result = response.json()
    assert (result["source"], result["width"], result["height"]) == ("astronaut.jpg", 512, 512)
    assert len(result["faces"]) == 1
    assert set(result["faces"][0]) == {"box", "score", "landmarks", "regions", "probs", "label", "confidence"}
    no_face = client.post("/v1/predict", files={"file": ("grey.jpg", jpeg(np.full((64, 64, 3), 128, np.uint8)), "image/jpeg")})
    assert no_face.status_code == 200 and no_face.json()["faces"] == []


def test_bad_uploads_get_clear_4xx_answers(client, astronaut):
    not_image = client.post("/v1/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert not_image.status_code == 415 and "not an image" in not_image.json()["detail"]
    garbage = client.post("/v1/predict", files={"file": ("photo.jpg", b"\xff\xd8 not really a jpeg", "image/jpeg")})
    assert garbage.status_code == 400 and "photo.jpg" in garbage.json()["detail"]
    empty = client.post("/v1/predict", files={"file": ("empty.png", b"", "image/png")})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)  # ~1.5 MB as JPEG
    too_large = client.post("/v1/predict", files={"file": ("big.jpg", jpeg(noise, 95), "image/jpeg")})
    assert too_large.status_code == 413 and "1 MB" in too_large.json()["detail"]
    assert client.post("/v1/predict").status_code == 422  # no file field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_web_page_in_headless_chromium(random_weights, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "msfer.cli", "serve", "--port", str(port), "--weights", str(random_weights)],
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
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
        screenshot = tmp_path / "page.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900", "--virtual-time-budget=60000",
             f"--screenshot={screenshot}", f"http://127.0.0.1:{port}/?demo=1"],
            check=True, timeout=120, capture_output=True,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    access_log = (tmp_path / "server.log").read_text()
    assert "POST /v1/predict HTTP/1.1\" 200" in access_log  # the page uploaded the sample and got its faces
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    box_green = (pixels[..., 0] < 40) & (pixels[..., 1] > 180) & (pixels[..., 2] < 40)
    assert box_green.sum() > 200, "no face box was drawn on the page"
