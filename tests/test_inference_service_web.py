"""The REST service as the network and browsers meet it: slow and cut uploads, shutdown, a reverse proxy at a
sub-path, Host and Origin rules, the hardening headers, the offline API page and the page's labels.

The servers here are real: uvicorn in a thread (or ``msfer serve`` in a process), reached over loopback sockets.
"""
from __future__ import annotations

import contextlib
import html
import http.client
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from msfer.inference.service import create_app  # noqa: E402


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app, **config):
    """``app`` served by uvicorn in a thread on a free loopback port; yields the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def health(port: int, host: str = "127.0.0.1") -> dict:
    return httpx.get(f"http://{host}:{port}/healthz", timeout=30).json()


def wait_until(condition, timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_upload(port: int, declared: int, sent: bytes) -> socket.socket:
    """A client that sends a POST's headers (declaring ``declared`` bytes) and ``sent`` of its body, then waits."""
    client = socket.create_connection(("127.0.0.1", port), timeout=60)
    client.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                   + f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return client


def response_of(client: socket.socket) -> tuple[int, bytes]:
    """(status, whole response) read from a raw socket until the server closes it."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return int(data.split(b" ", 2)[1]), data


# -- stalled and cut uploads, shutdown ------------------------------------------------------------------------------


def test_stalled_uploads_hold_no_place_and_are_answered_408(recognizer, astronaut):
    # One place in all: before, three clients that sent a few KB and waited made every other request 503.
    app = create_app(recognizer, max_concurrent=1, max_queue=0, upload_timeout=6, max_uploads=4)
    with running(app) as port:
        stalled = [start_upload(port, 200_000, b"\xff\xd8" + b"\x00" * 4000) for _ in range(3)]
        wait_until(lambda: health(port)["uploads"]["receiving"] == 3, what="three uploads being received")
        assert health(port)["in_flight"] == 0  # receiving is not recognising: no place is taken
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"image": ("a.jpg", jpeg(astronaut))},
                            timeout=120)
        assert answer.status_code == 200 and len(answer.json()["faces"]) == 1
        assert health(port)["uploads"]["receiving"] == 3  # answered while the others still stall, not after them
        # Bodies being received are bounded apart from recognition: a fifth upload at once is 503.
        stalled.append(start_upload(port, 200_000, b"\xff\xd8" + b"\x00" * 4000))
        wait_until(lambda: health(port)["uploads"]["receiving"] == 4, what="four uploads being received")
        busy = httpx.post(f"http://127.0.0.1:{port}/v1/predict", content=jpeg(astronaut), timeout=30)
        assert busy.status_code == 503 and "4 uploads are arriving" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "2"
        for client in stalled:
            status, data = response_of(client)  # the server answers, then closes the connection
            client.close()
            assert status == 408, data
            assert b"within 6 s" in data and b"4,002 bytes" in data
        uploads = health(port)["uploads"]
        assert uploads == {"receiving": 0, "timed_out": 4, "disconnected": 0}


def test_a_client_that_disconnects_mid_upload_is_one_info_line(recognizer, caplog):
    app = create_app(recognizer)
    with caplog.at_level(logging.DEBUG), running(app) as port:
        for _ in range(3):
            client = start_upload(port, 500_000, b"\x89PNG" + b"\x00" * 20_000)
            time.sleep(0.2)
            client.close()
        wait_until(lambda: health(port)["uploads"]["disconnected"] == 3, what="three cut uploads counted")
        assert health(port)["in_flight"] == 0
    records = [r for r in caplog.records if r.name.startswith(("msfer", "uvicorn", "fastapi", "starlette"))]
    cut = [r for r in records if "disconnected during its upload" in r.getMessage()]
    assert len(cut) == 3 and all(r.levelno == logging.INFO and r.exc_info is None for r in cut)
    assert "20,004 bytes" in cut[0].getMessage()
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING or r.exc_info] == []


def serve_process(weights: Path, log_path: Path, *options: str) -> tuple[subprocess.Popen, int]:
    """``msfer serve`` in a process of its own, once it answers /healthz; (process, port)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "msfer.cli", "serve", "--port", str(port), "--weights", str(weights), *options],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server, port
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"msfer serve did not start:\n{log_path.read_text()}")
        time.sleep(0.3)


@pytest.mark.slow
def test_sigterm_with_an_upload_trickling_in_stops_the_server_at_once(random_weights, tmp_path):
    log_path = tmp_path / "server.log"
    server, port = serve_process(random_weights, log_path)
    client = start_upload(port, 1_000_000, b"\xff\xd8")
    stop = threading.Event()

    def trickle() -> None:  # a byte every 0.1 s: never done, never silent
        with contextlib.suppress(OSError):
            while not stop.wait(0.1):
                client.sendall(b"\x00")

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        wait_until(lambda: health(port)["uploads"]["receiving"] == 1, what="the upload being received")
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        took = time.monotonic() - started
        status, data = response_of(client)
    finally:
        stop.set()
        client.close()
        if server.poll() is None:
            server.kill()
    log = log_path.read_text()
    assert took < 5, f"the server took {took:.1f} s to stop:\n{log}"
    assert server.returncode in (0, -signal.SIGTERM), log  # uvicorn ends by the signal it handled
    assert status == 503 and b"shutting down" in data
    assert "Finished server process" in log  # the whole log was written
    assert "Traceback" not in log and "ERROR" not in log, log


# -- behind a reverse proxy at a sub-path ---------------------------------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "content-length"}


@contextlib.contextmanager
def prefix_proxy(backend_port: int, prefix: str, replace: dict[str, bytes] | None = None):
    """A reverse proxy on a free port that serves the backend under ``prefix`` and removes it before passing a request
    on, keeping the client's Host, as nginx's ``location /msfer/ { proxy_pass http://backend/; proxy_set_header
    Host $http_host; }`` does. ``replace``: backend paths it answers itself with these bytes (a JPEG). Yields
    (port, the backend paths requested)."""
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's names
            if not self.path.startswith(prefix + "/"):
                self.answer(404, b"not under " + prefix.encode(), "text/plain")
                return
            path = self.path[len(prefix):]
            requested.append(f"{self.command} {path}")
            if replace and path in replace:
                self.answer(200, replace[path], "image/jpeg")
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
            backend = http.client.HTTPConnection("127.0.0.1", backend_port, timeout=120)
            try:
                backend.request(self.command, path, body=body, headers=headers)
                response = backend.getresponse()
                data = response.read()
            finally:
                backend.close()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_HEAD = do_GET  # noqa: N815

        def answer(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy.server_address[1], requested
    finally:
        proxy.shutdown()
        proxy.server_close()


def addresses(page: str) -> list[str]:
    """Every address a page or script loads: src and href attributes, fetch() calls and Swagger UI's url."""
    return re.findall(r'(?:src|href)="([^"#?][^"]*)"', page) + re.findall(r'fetch\("([^"]+)"', page) + \
        re.findall(r'\burl: "([^"]+)"', page)


def test_the_page_and_docs_work_behind_a_proxy_at_a_sub_path(recognizer, astronaut):
    app = create_app(recognizer)
    with running(app, root_path="/msfer") as port, prefix_proxy(port, "/msfer") as (proxy, requested):
        base = f"http://127.0.0.1:{proxy}/msfer/"
        origin = f"http://127.0.0.1:{proxy}"
        page = httpx.get(base)
        assert page.status_code == 200
        loaded = addresses(page.text)
        script = httpx.get(urljoin(base, "static/app.js"))
        loaded += addresses(script.text)
        assert {"static/app.css", "static/app.js", "healthz", "v1/predict", "sample.jpg"} <= set(loaded)
        for address in loaded:  # each resolved as the browser resolves it: under the proxy's prefix
            url = urljoin(base, address)
            assert urlsplit(url).path.startswith("/msfer/"), address
            if address == "v1/predict":
                sample = httpx.get(urljoin(base, "sample.jpg")).content
                answer = httpx.post(url, files={"image": ("sample.jpg", sample)}, headers={"Origin": origin},
                                    timeout=120)
                assert answer.status_code == 200 and len(answer.json()["faces"]) == 1, answer.text
            else:
                assert httpx.get(url).status_code == 200, address
        assert httpx.get(urljoin(base, "healthz")).json()["status"] == "ok"

        docs = httpx.get(urljoin(base, "docs"))
        assert docs.status_code == 200
        docs_loaded = addresses(docs.text)
        docs_loaded += [a for s in docs_loaded if s.endswith("docs.js") for a in addresses(httpx.get(urljoin(
            urljoin(base, "docs"), s)).text)]
        assert "openapi.json" in docs_loaded
        for address in docs_loaded:
            url = urljoin(urljoin(base, "docs"), address)
            assert urlsplit(url).path.startswith("/msfer/"), address
            assert httpx.get(url).status_code == 200, address
        description = httpx.get(urljoin(base, "openapi.json")).json()
        assert description["servers"] == [{"url": "/msfer"}]  # Swagger UI's "try it out" goes through the proxy
        assert "/v1/predict" in description["paths"]
    assert "GET /healthz" in requested and "POST /v1/predict" in requested and "GET /openapi.json" in requested


def test_serve_takes_a_root_path():
    from msfer.cli.serve import root_path

    assert [root_path(value) for value in ("", "/", "msfer", "/msfer/", "/a/b/")] == ["", "", "/msfer", "/msfer",
                                                                                      "/a/b"]


# -- Host, Origin and the hardening headers -------------------------------------------------------------------------


def test_only_the_hosts_the_service_is_for_are_answered(recognizer):
    app = create_app(recognizer, allowed_hosts=["msfer.example.org", ".corp.example"])
    for host in ("127.0.0.1:8000", "localhost", "localhost:8000", "[::1]:8000", "10.1.2.3", "LOCALHOST.",
                 "app.localhost", socket.gethostname(), "msfer.example.org", "MSFER.example.org:443",
                 "corp.example", "a.b.corp.example", "testserver"):
        response = TestClient(app, base_url=f"http://{host}").get("/healthz")
        assert response.status_code == 200, host
    for host in ("evil.example", "127.0.0.1.evil.example", "example.org", "notcorp.example", "msfer.example.org.evil"):
        response = TestClient(app, base_url=f"http://{host}").get("/healthz")
        assert response.status_code == 400, host
        assert response.headers["content-type"] == "application/json"
        assert "--allowed-hosts" in response.json()["detail"] and host in response.json()["detail"]
    # the default: no names but the local ones
    default = create_app(recognizer)
    assert TestClient(default, base_url="http://msfer.example.org").get("/").status_code == 400
    assert TestClient(default, base_url="http://localhost:8000").get("/").status_code == 200
    anything = create_app(recognizer, allowed_hosts=["*"])
    assert TestClient(anything, base_url="http://msfer.example.org").get("/healthz").status_code == 200


class Counting:
    """The real recognizer, counting the images it was given."""

    def __init__(self, recognizer) -> None:
        self.recognizer, self.calls = recognizer, 0

    def __getattr__(self, name):
        return getattr(self.recognizer, name)

    def predict(self, image, decision=None):
        self.calls += 1
        return self.recognizer.predict(image, decision=decision)


def test_cross_origin_posts_are_refused_unless_allowed(recognizer, astronaut):
    counting = Counting(recognizer)
    client = TestClient(create_app(counting), base_url="http://localhost:8000")
    upload = {"image": ("a.jpg", jpeg(astronaut), "image/jpeg")}
    for origin in ("http://evil.example", "null", "http://localhost:9000", "http://127.0.0.1:8000",
                   "http://localhost.evil.example:8000", "not an origin"):
        refused = client.post("/v1/predict", files=upload, headers={"Origin": origin})
        assert refused.status_code == 403, origin
        assert "cross-origin" in refused.json()["detail"] and "--allowed-origins" in refused.json()["detail"]
    assert counting.calls == 0  # nothing was recognised for them
    # the service's own page (same origin), and clients that send no Origin (curl)
    assert client.post("/v1/predict", files=upload, headers={"Origin": "http://localhost:8000"}).status_code == 200
    assert client.post("/v1/predict", files=upload).status_code == 200
    assert client.get("/healthz", headers={"Origin": "http://evil.example"}).status_code == 200  # reads are not posts
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://evil.example"}).headers

    allowed = TestClient(create_app(counting, allowed_origins=["https://app.example.org"]),
                         base_url="http://localhost:8000")
    answer = allowed.post("/v1/predict", files=upload, headers={"Origin": "https://app.example.org"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.org"
    preflight = allowed.options("/v1/predict", headers={"Origin": "https://app.example.org",
                                                        "Access-Control-Request-Method": "POST",
                                                        "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert allowed.post("/v1/predict", files=upload, headers={"Origin": "https://other.example"}).status_code == 403
    assert counting.calls == 3
    # an allowed origin written as people write addresses: CORS answers the browser's form of it
    loose = TestClient(create_app(counting, allowed_origins=["HTTPS://App.Example.org:443/"]),
                       base_url="http://localhost:8000")
    answer = loose.post("/v1/predict", files=upload, headers={"Origin": "https://app.example.org"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example.org"


def test_every_response_carries_the_hardening_headers(recognizer, astronaut):
    class Failing(Counting):
        def predict(self, image, decision=None):
            raise RuntimeError("the model broke")

    client = TestClient(create_app(recognizer, max_upload_mb=0.01), base_url="http://localhost")
    failing = TestClient(create_app(Failing(recognizer)), base_url="http://localhost", raise_server_exceptions=False)
    photo = jpeg(astronaut)
    responses = {
        "page": client.get("/"), "health": client.get("/healthz"), "sample": client.get("/sample.jpg"),
        "script": client.get("/static/app.js"), "style": client.get("/static/app.css"), "docs": client.get("/docs"),
        "swagger": client.get("/static/swagger-ui/swagger-ui-bundle.js"), "description": client.get("/openapi.json"),
        "404": client.get("/no/such/page"), "405": client.get("/v1/predict"),
        "413": client.post("/v1/predict", content=photo), "422": client.post("/v1/predict"),
        "bad host": TestClient(client.app, base_url="http://evil.example").get("/"),
        "cross-origin": client.post("/v1/predict", content=photo, headers={"Origin": "http://evil.example"}),
        "500": failing.post("/v1/predict", files={"image": ("a.jpg", photo)}),
    }
    statuses = {name: response.status_code for name, response in responses.items()}
    assert statuses == {"page": 200, "health": 200, "sample": 200, "script": 200, "style": 200, "docs": 200,
                        "swagger": 200, "description": 200, "404": 404, "405": 405, "413": 413, "422": 422,
                        "bad host": 400, "cross-origin": 403, "500": 500}
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, name
        assert response.headers["x-frame-options"] == "DENY", name
        assert "'unsafe-inline'" not in policy, name
    # The page runs under that policy: no inline script or style left in it.
    assert "<script>" not in responses["page"].text and "<style>" not in responses["page"].text


# -- the API page, offline ------------------------------------------------------------------------------------------


def test_the_api_page_loads_only_the_services_own_files(recognizer):
    client = TestClient(create_app(recognizer), base_url="http://localhost")
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    loaded = addresses(docs.text)
    assert loaded and not any(re.match(r"(https?:)?//", address) for address in loaded), loaded  # no CDN
    sizes = {}
    for address in loaded:
        response = client.get(urljoin("/docs", address))
        assert response.status_code == 200, address
        sizes[address] = len(response.content)
    assert sizes["static/swagger-ui/swagger-ui-bundle.js"] > 500_000  # Swagger UI itself, not a stub
    assert "openapi.json" in addresses(client.get("/static/docs.js").text)
    assert "<script>" not in docs.text  # no inline script: the policy allows none


# -- the page in a browser ------------------------------------------------------------------------------------------


def face_at_the_right_edge(astronaut: np.ndarray) -> bytes:
    """A 1800 x 1000 JPEG whose one face (the astronaut's, twice its size) touches the top and the right edge,
    where a label drawn from the face's corner would run out of the image."""
    canvas = np.full((1000, 1800, 3), 120, np.uint8)
    face = np.asarray(Image.fromarray(astronaut).resize((1024, 1024)))
    canvas[:934, 1240:] = face[90:, :560]  # the face's box, x 356-546 and y 113-354 there, ends at x 1786, y 23
    return jpeg(canvas, 95)


@pytest.mark.slow
def test_the_page_behind_a_proxy_draws_labels_inside_the_image(random_weights, astronaut, tmp_path, open_page):
    """msfer serve --root-path behind a proxy at /msfer/: the page loads, uploads through the proxy and draws each
    face's label whole inside the image, here for a face at the image's top right corner; the API page renders."""
    log_path = tmp_path / "server.log"
    server, port = serve_process(random_weights, log_path, "--root-path", "/msfer")
    try:
        sample = {"/sample.jpg": face_at_the_right_edge(astronaut)}
        with prefix_proxy(port, "/msfer", replace=sample) as (proxy, requested):
            base = f"http://127.0.0.1:{proxy}/msfer/"
            warm = httpx.post(urljoin(base, "v1/predict"), content=sample["/sample.jpg"], timeout=180)
            assert warm.status_code == 200 and len(warm.json()["faces"]) == 1
            dom = open_page(base + "?demo=1").content()
            docs = open_page(base + "docs", until=".opblock").content()
    finally:
        server.terminate()
        server.wait(timeout=30)
    status = dom.split('id="status"')[1].split("</p>")[0]
    assert "1 face" in status, (status, log_path.read_text())
    assert requested.count("POST /v1/predict") >= 2 and "GET /healthz" in requested
    tag = re.search(r'<canvas id="canvas"[^>]*>', dom)[0]
    width, height = (int(re.search(f' {name}="([0-9]+)"', tag)[1]) for name in ("width", "height"))
    captions = json.loads(html.unescape(re.search(r' data-captions="([^"]*)"', tag)[1]))
    assert (width, height) == (900, 500) and len(captions) == 1, tag
    for caption in captions:
        assert 0 <= caption["left"] and caption["left"] + caption["width"] <= width, caption
        assert 0 <= caption["top"] and caption["top"] + caption["height"] <= height, caption
        assert caption["textWidth"] + 8 <= caption["width"], caption  # the whole text is inside its rectangle
        assert 790 + caption["width"] > width, caption  # drawn from the face's corner (x 798 shown) it would not fit
    assert "/v1/predict" in docs and "opblock" in docs  # Swagger UI rendered the API, offline, under the prefix
