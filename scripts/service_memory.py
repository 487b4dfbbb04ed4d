"""The REST service's resident memory under large-image requests: start ``msfer serve``, send it one large,
mostly flat PNG many times, and print its resident size before, during and after.

    python scripts/service_memory.py                        # 40 requests of a 6320 x 6320 PNG, 2 at a time
    python scripts/service_memory.py --requests 10 --size 4000 --concurrency 4 --weights model.pt

The PNG (a grey canvas with a few shapes, about 40 KB) decodes to 6320 x 6320 = 39.9 MP, just under the service's
default 40 MP limit: the largest image the defaults accept, made of almost nothing. The figures are the server
process's ``VmRSS`` (resident now) and ``VmHWM`` (the peak) from ``/proc`` (Linux): after start-up (the model
loaded), after one warm-up request of a small photo, then after each request, and once more after
``--settle`` seconds idle. Extra ``msfer serve`` options follow ``--``:

    python scripts/service_memory.py -- --max-concurrent 1
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw


def large_png(size: int) -> bytes:
    """A ``size`` x ``size`` RGB PNG, mostly flat: a few kB to a few tens of kB whatever its size."""
    image = Image.new("RGB", (size, size), (190, 190, 190))
    draw = ImageDraw.Draw(image)
    for k in range(8):
        left = size * k // 9
        draw.rectangle([left, left, left + size // 12, left + size // 12], fill=(40 * k % 256, 90, 200 - 20 * k))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def small_jpeg() -> bytes:
    sample = Path(__file__).resolve().parents[1] / "src" / "msfer" / "samples" / "astronaut.jpg"
    return sample.read_bytes()


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 600) -> tuple[int, float]:
    """POST ``body`` as the raw request body to /v1/predict; (status, seconds)."""
    start = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - start
    finally:
        connection.close()


def wait_ready(port: int, server: subprocess.Popen, log, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"msfer serve exited with {server.returncode} before it answered:\n{log.read()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("msfer serve did not answer /healthz in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="large-image requests to send (default 40)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight at once (default 2)")
    parser.add_argument("--size", type=int, default=6320, help="the PNG's side in pixels (default 6320)")
    parser.add_argument("--weights", default=None, help="the model (default the bundled one)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds idle before the last reading (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here as JSON")
    parser.add_argument("serve_options", nargs="*", help="after --: more msfer serve options")
    args = parser.parse_args(argv)

    body = large_png(args.size)
    port = free_port()
    command = [sys.executable, "-m", "msfer.cli", "serve", "--port", str(port), *args.serve_options]
    if args.weights:
        command += ["--weights", args.weights]
    log = tempfile.TemporaryFile("w+")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    figures: dict = {"png_bytes": len(body), "size": args.size, "requests": args.requests,
                     "concurrency": args.concurrency, "serve_options": args.serve_options,
                     "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX")}
    try:
        wait_ready(port, server, log)
        figures["started_mb"] = memory_mb(server.pid)[0]
        status, _ = post(port, small_jpeg())
        assert status == 200, f"warm-up request answered {status}"
        figures["warm_mb"] = memory_mb(server.pid)[0]
        print(f"PNG {len(body):,} bytes, {args.size} x {args.size}; resident after start-up "
              f"{figures['started_mb']:.0f} MB, after a warm-up photo {figures['warm_mb']:.0f} MB", flush=True)
        after, seconds, statuses = [], [], []
        with ThreadPoolExecutor(args.concurrency) as pool:
            for status, took in pool.map(lambda _: post(port, body), range(args.requests)):
                statuses.append(status)
                seconds.append(took)
                after.append(memory_mb(server.pid)[0])
                print(f"request {len(after):3d}: {status} in {took:5.1f} s, resident {after[-1]:6.0f} MB", flush=True)
        time.sleep(args.settle)
        rss, peak = memory_mb(server.pid)
        figures.update(statuses=sorted(set(statuses)), resident_after_each_mb=[round(v) for v in after],
                       max_resident_between_mb=round(max(after)), resident_settled_mb=round(rss), peak_mb=round(peak),
                       median_seconds=round(sorted(seconds)[len(seconds) // 2], 2))
        print(f"resident: {figures['started_mb']:.0f} MB started, {figures['warm_mb']:.0f} MB warm, "
              f"{max(after):.0f} MB most after a request, {rss:.0f} MB after {args.settle:g} s idle; "
              f"peak {peak:.0f} MB; median request {figures['median_seconds']} s; statuses {figures['statuses']}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
