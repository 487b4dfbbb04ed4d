"""``msfer serve``: the REST service and its web page (:mod:`msfer.inference.service`)."""
from __future__ import annotations

import argparse

import uvicorn

from ..errors import MsferError
from ..faces.retinaface import RetinaFaceDetector
from ..inference.recognizer import EmotionRecognizer
from ..inference.service import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_UPLOADS,
    DEFAULT_MEMORY_BUDGET_MB,
    DEFAULT_UPLOAD_TIMEOUT_S,
    create_app,
)
from ..inference.service_images import limit_allocator
from .options import add_decision_argument, add_model_arguments, model_options

DEFAULT_SHUTDOWN_TIMEOUT_S = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--root-path", default="",
                        help="the sub-path a reverse proxy serves the service under and removes before passing a "
                             "request on (e.g. /msfer for nginx 'location /msfer/ { proxy_pass "
                             "http://127.0.0.1:8000/; }'); the API description then names it")
    parser.add_argument("--allowed-hosts", nargs="+", default=[], metavar="NAME",
                        help="more names the service answers under (the Host header), beside IP addresses, "
                             "localhost and this machine's name; .example.org: that domain and its subdomains; "
                             "'*': any. Other names get 400 (a guard against DNS rebinding)")
    parser.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                        help="web origins (https://app.example.org) whose pages may POST to the service and read "
                             "its answers (CORS); '*': any. A browser's POST from another origin gets 403; the "
                             "service's own page and clients without an Origin header (curl) are not concerned")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted request body in MB; larger ones get 413 "
                             f"(default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--upload-timeout", type=float, default=DEFAULT_UPLOAD_TIMEOUT_S, metavar="SECONDS",
                        help=f"time for a whole request body to arrive; a slower upload gets 408 "
                             f"(default {DEFAULT_UPLOAD_TIMEOUT_S:g})")
    parser.add_argument("--max-uploads", type=int, default=DEFAULT_MAX_UPLOADS,
                        help=f"request bodies received at once; more get 503 with Retry-After "
                             f"(default {DEFAULT_MAX_UPLOADS})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted image, width x height; larger ones get 413 before decoding "
                             f"(default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT,
                        help=f"requests decoded and recognised at once (default {DEFAULT_MAX_CONCURRENT})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"requests that wait for a turn; more get 503 with Retry-After "
                             f"(default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB,
                        help=f"estimated memory the requests being recognised may hold together; a request waits "
                             f"for its turn until its estimate fits (one alone always runs) "
                             f"(default {DEFAULT_MEMORY_BUDGET_MB:g})")
    parser.add_argument("--shutdown-timeout", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_S, metavar="SECONDS",
                        help=f"on SIGTERM or Ctrl+C, how long requests being recognised may take to finish before "
                             f"the server stops anyway; uploads still arriving get 503 at once "
                             f"(default {DEFAULT_SHUTDOWN_TIMEOUT_S})")
    add_decision_argument(parser)
    add_model_arguments(parser)


def root_path(value: str) -> str:
    """``--root-path`` as ASGI wants it: '' or '/a/b' (a leading slash, none at the end)."""
    value = value.strip().strip("/")
    return f"/{value}" if value else ""


def run(args: argparse.Namespace) -> int:
    if args.max_upload_mb <= 0 or args.max_pixels < 1 or args.max_concurrent < 1 or args.max_queue < 0:
        raise MsferError("--max-upload-mb and --max-pixels must be positive, --max-concurrent at least 1, "
                         "--max-queue 0 or more")
    if args.upload_timeout <= 0 or args.shutdown_timeout < 0 or args.memory_budget_mb <= 0 or args.max_uploads < 1:
        raise MsferError("--upload-timeout and --memory-budget-mb must be positive, --max-uploads at least 1, "
                         "--shutdown-timeout 0 or more")
    # Before any thread exists: every thread that allocates would otherwise get an arena of its own.
    limit_allocator()
    # Without onnxruntime's memory arena the detector's buffers are freed after each request, not kept at the size
    # of the largest image seen.
    detector = RetinaFaceDetector(memory_arena=False)
    recognizer = EmotionRecognizer(**model_options(args), decision=args.decision, detector=detector)
    app = create_app(recognizer, args.max_upload_mb, args.max_pixels, args.max_concurrent, args.max_queue,
                     upload_timeout=args.upload_timeout, allowed_hosts=args.allowed_hosts,
                     allowed_origins=args.allowed_origins, memory_budget_mb=args.memory_budget_mb,
                     max_uploads=args.max_uploads)
    prefix = root_path(args.root_path)
    where = f"http://{args.host}:{args.port}/" + (f" (served as {prefix}/ by the proxy)" if prefix else "")
    print(f"msfer serve: open {where} (Ctrl+C stops)", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, root_path=prefix,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    StoppingServer(config, app.state.service).run()
    return 0


class StoppingServer(uvicorn.Server):
    """uvicorn's server that, as it begins to shut down, tells the service: uploads still arriving are then answered
    503 at once, instead of holding the shutdown for as long as their clients take."""

    def __init__(self, config: uvicorn.Config, service) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets=None) -> None:
        self.service.stopping = True
        await super().shutdown(sockets)
