"""`llm-router sim`: flags for the simulator; fault flags set the default for every model
(per-model faults: `POST /_sim/config {"model": "gpt-4.1", "down": true}`)."""

from __future__ import annotations

import argparse
import os

from .faults import Faults
from .server import Simulator, run


def _error_rate(value: str) -> tuple[int, float]:
    status, _, rate = value.partition("=")
    try:
        return int(status), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError("use STATUS=RATE, e.g. 503=0.1") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--api-key", action="append", help="a key it accepts (repeatable; default $AISA_API_KEY)")
    p.add_argument("--credits", type=float, default=100.0, help="USD of credits per key (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed for random faults")
    p.add_argument("--latency-ms", type=float, default=0)
    p.add_argument("--latency-per-token-ms", type=float, default=0)
    p.add_argument("--rpm", type=int)
    p.add_argument("--tpm", type=int)
    p.add_argument("--rate-window-s", type=float, default=60)
    p.add_argument("--error-rate", type=_error_rate, action="append", default=[], metavar="STATUS=RATE")
    p.add_argument("--down", action="store_true")
    p.add_argument("--hang-s", type=float, default=0)
    p.add_argument("--cut-stream-after", type=int)
    p.add_argument("--malformed", action="store_true")


def build(args: argparse.Namespace) -> Simulator:
    keys = args.api_key or [os.environ.get("AISA_API_KEY", "")]
    faults = Faults(
        latency_ms=args.latency_ms, latency_per_token_ms=args.latency_per_token_ms, rpm=args.rpm, tpm=args.tpm,
        rate_window_s=args.rate_window_s, error_rates=dict(args.error_rate), down=args.down, hang_s=args.hang_s,
        cut_stream_after=args.cut_stream_after, malformed=args.malformed,
    )
    return Simulator(keys, credits=args.credits, faults=faults, seed=args.seed)


def serve(args: argparse.Namespace) -> None:
    try:
        sim = build(args)
    except ValueError as exc:
        raise SystemExit(f"llm-router sim: {exc}") from None
    print(f"AIsa simulator on http://{args.host}:{args.port}/v1", flush=True)
    run(args.host, args.port, sim)
