"""``msfer serve``: the REST service and its web page (:mod:`msfer.inference.service`)."""
from __future__ import annotations

import argparse

from ..errors import MsferError
from ..inference.recognizer import EmotionRecognizer
from ..inference.service import (
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_MB,
    create_app,
)
from .options import add_decision_argument, add_model_arguments, model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted request body in MB; larger ones get 413 "
                             f"(default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"largest accepted image, width x height; larger ones get 413 before decoding "
                             f"(default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-concurrent", type=int, default=DEFAULT_MAX_CONCURRENT,
                        help=f"requests decoded and recognised at once (default {DEFAULT_MAX_CONCURRENT})")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"requests that wait for a turn; more get 503 with Retry-After "
                             f"(default {DEFAULT_MAX_QUEUE})")
    add_decision_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.max_upload_mb <= 0 or args.max_pixels < 1 or args.max_concurrent < 1 or args.max_queue < 0:
        raise MsferError("--max-upload-mb and --max-pixels must be positive, --max-concurrent at least 1, "
                         "--max-queue 0 or more")
    recognizer = EmotionRecognizer(**model_options(args), decision=args.decision)
    print(f"msfer serve: open http://{args.host}:{args.port}/ (Ctrl+C stops)")
    app = create_app(recognizer, args.max_upload_mb, args.max_pixels, args.max_concurrent, args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
