"""The command line of ``scripts/soak``: its options (a URL given must be loopback), the soak
run in a temporary directory, the verdict, the JSON written (and printed), the summary on
stderr, and the exit status."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from serve_process import REPO_ROOT, positive_int

from .report import MIB, summary_text, verdict
from .run import soak

DEFAULT_OUT = REPO_ROOT / "bench-results" / "soak.json"
DEFAULT_MAX_BODY_BYTES = 2 * MIB


def loopback_url(url: str) -> str:
    """``url`` if its host is a loopback address (127.0.0.0/8, ::1), else ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http URL: {url!r}")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"{parts.hostname!r} is not an IP address: use 127.0.0.1") from None
    if not address.is_loopback:
        raise ValueError(f"{parts.hostname} is not loopback: the soak runs against 127.0.0.1 only")
    return url.rstrip("/")


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description="Load the service on loopback for a bounded time; check nothing is lost or leaked.",
    )
    parser.add_argument(
        "--duration-s", type=positive_int, default=300, help="load time (default 300)"
    )
    parser.add_argument(
        "--warmup-s", type=non_negative_float, default=None,
        help="warm-up before the measured run (default: a tenth of the duration, at most 15)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=positive_int, default=8, help="client threads (default 8)"
    )
    parser.add_argument(
        "--keys", type=positive_int, default=3, help="API keys to create (default 3)"
    )
    parser.add_argument("--slots", type=positive_int, default=2, help="sandbox slots (default 2)")
    parser.add_argument(
        "--executor-queue", type=positive_int, default=4,
        help="EXECUTOR_MAX_QUEUED_REQUESTS of the service started here (default 4: small, so "
        "that the load meets back-pressure)",
    )  # fmt: skip
    parser.add_argument("--url", help="a running service on loopback instead of starting one")
    parser.add_argument(
        "--key", action="append", default=[], help="an API key of --url (repeatable)"
    )
    parser.add_argument(
        "--service-pid", type=positive_int,
        help="with --url: the pid of its exec-agent serve, for the memory and process checks",
    )  # fmt: skip
    parser.add_argument(
        "--max-body-bytes", type=positive_int, default=DEFAULT_MAX_BODY_BYTES,
        help="with --url: its MAX_BODY_BYTES (default 2 MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--max-rss-growth-mib", type=positive_int, default=256,
        help="the service's RSS may grow this much from the baseline (default 256)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON goes")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.url is None and (args.key or args.service_pid):
        parser.error("--key and --service-pid go with --url")
    if args.url is not None:
        try:
            args.url = loopback_url(args.url)
        except ValueError as exc:
            parser.error(str(exc))
        if not args.key:
            parser.error("--url needs at least one --key")
    warmup_s = args.warmup_s if args.warmup_s is not None else min(15.0, args.duration_s / 10)
    with tempfile.TemporaryDirectory(prefix="exec-agent-soak-") as tmp:
        report = soak(args, warmup_s, Path(tmp))
    report["failures"] = verdict(report, args.max_rss_growth_mib * MIB)
    text = json.dumps(report, indent=2, sort_keys=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    print(summary_text(report), file=sys.stderr)
    return 1 if report["failures"] else 0
