"""``visionsearch-loadtest``: run a closed- or open-loop load test, or sweep the offered rate.

visionsearch-loadtest --address 127.0.0.1:50051 --mix search_vector=8,tag=1,embed=1 --concurrency 16
visionsearch-loadtest --mode open --rate 500 --duration 30 --json out.json --png out.png
visionsearch-loadtest sweep --start 200 --factor 1.5 --p99-bound-ms 3 --step-duration 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from visionsearch_client.loadtest.config import KINDS, LoadConfig, LoadTestError, parse_mix

EXIT_OK, EXIT_USAGE = 0, 2


def _words(text: str) -> tuple[str, ...]:
    if text.startswith("@"):
        words = Path(text[1:]).read_text().split()
    else:
        words = [w.strip() for w in text.split(",")]
    return tuple(w for w in words if w)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target and workload")
    g.add_argument("--address", default="127.0.0.1:50051", help="server host:port (default %(default)s)")
    g.add_argument("--collection", default="default", help="collection searched (default %(default)s)")
    g.add_argument(
        "--mix",
        default="search_vector=1",
        help=f"weighted request kinds, e.g. search_vector=8,tag=1,embed=1; kinds: {', '.join(KINDS)} "
        "(default %(default)s)",
    )
    g.add_argument("-k", type=int, default=10, help="hits per search and tags per Tag (default %(default)s)")
    g.add_argument("--no-payload", action="store_true", help="searches ask for no payloads")
    g.add_argument(
        "--vectors",
        type=Path,
        help=".npy file of query vectors (n, dim); default: vectors taken from the collection itself",
    )
    g.add_argument(
        "--images",
        type=Path,
        help="folder of images for search_image, tag and embed (default: Tux Paint stamp photos)",
    )
    g.add_argument(
        "--words", type=_words, help="words for search_word: a,b,c or @file (default: common nouns)"
    )
    g.add_argument("--seed", type=int, default=0, help="seed for the mix, the inputs and Poisson arrivals")
    g.add_argument(
        "--engine",
        choices=("python", "native"),
        default="python",
        help="who sends the load: python (grpc.aio in this process) or native (visionsearch-loadgen, the C++ "
        "generator built by `make clients`) (default %(default)s)",
    )
    g.add_argument(
        "--timeout", type=float, default=10.0, help="deadline per request, s (default %(default)s)"
    )
    g.add_argument("--api-key", default=None, help="API key (default: $VISIONSEARCH_API_KEY if set)")
    g.add_argument("--tls", action="store_true", help="speak TLS, verified by the system's roots or --ca")
    g.add_argument(
        "--ca", default=None, help="PEM CA file that signed the server's certificate (implies --tls)"
    )
    g.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="how long to wait for the server before giving up, s (default %(default)s)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", type=Path, help="write the JSON report here")
    o.add_argument("--png", type=Path, help="write the PNG chart here")
    o.add_argument(
        "--out",
        type=Path,
        default=Path("loadtest-results"),
        help="folder for timestamped JSON + PNG when neither --json nor --png is given (default %(default)s)",
    )
    o.add_argument("--no-save", action="store_true", help="print only; write no files")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="visionsearch-loadtest",
        description="Load-test a visionsearch server. Subcommands: run (the default) and sweep.",
        epilog="`visionsearch-loadtest sweep --help` for the rate sweep.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser(
        "run",
        help="one closed- or open-loop run (default)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(r)
    g = r.add_argument_group("load")
    g.add_argument(
        "--mode",
        choices=("closed", "open"),
        default="closed",
        help="closed: N callers back to back; open: a fixed arrival rate (default %(default)s)",
    )
    g.add_argument(
        "--concurrency", "-c", type=int, default=8, help="closed-loop callers (default %(default)s)"
    )
    g.add_argument("--rate", type=float, default=100.0, help="open-loop requests/s (default %(default)s)")
    g.add_argument(
        "--arrival",
        choices=("uniform", "poisson"),
        default="uniform",
        help="open-loop arrivals: every 1/rate s, or Poisson (seeded) (default %(default)s)",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="open-loop cap on outstanding requests (default %(default)s)",
    )
    g.add_argument("--duration", type=float, default=10.0, help="measured seconds (default %(default)s)")
    g.add_argument(
        "--requests", type=int, help="stop after this many measured requests (whichever comes first)"
    )
    g.add_argument(
        "--warmup", type=float, default=1.0, help="seconds sent but not recorded (default %(default)s)"
    )

    s = sub.add_parser(
        "sweep",
        help="raise an open-loop rate until p99 breaks a bound",
        description="Open-loop steps at rising rates; stops when p99 > bound, errors > "
        "--max-error-rate or achieved < --min-achieved x offered; reports the highest rate held.",
    )
    _common(s)
    g = s.add_argument_group("sweep")
    g.add_argument("--start", type=float, required=True, help="first offered rate, req/s")
    step = g.add_mutually_exclusive_group()
    step.add_argument("--factor", type=float, help="multiply the rate by this each step (default 1.5)")
    step.add_argument("--step", type=float, help="add this to the rate each step instead")
    g.add_argument(
        "--p99-bound-ms", type=float, required=True, help="a step holds while its p99 is within this"
    )
    g.add_argument(
        "--step-duration", type=float, default=5.0, help="measured seconds per step (default %(default)s)"
    )
    g.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per step (default %(default)s)")
    g.add_argument("--max-steps", type=int, default=12, help="at most this many steps (default %(default)s)")
    g.add_argument(
        "--attempts", type=int, default=1,
        help="runs of a rate that breaks the bound before the sweep stops; one that holds is enough "
        "(default %(default)s)",
    )  # fmt: skip
    g.add_argument("--max-error-rate", type=float, default=0.01, help="(default %(default)s)")
    g.add_argument(
        "--min-achieved",
        type=float,
        default=0.95,
        help="achieved/offered a step must reach (default %(default)s)",
    )
    g.add_argument(
        "--arrival", choices=("uniform", "poisson"), default="uniform", help="(default %(default)s)"
    )
    g.add_argument("--max-in-flight", type=int, default=1000, help="(default %(default)s)")
    return p


def _outputs(args: argparse.Namespace, stem: str) -> tuple[Path | None, Path | None]:
    if args.json is not None or args.png is not None:
        return args.json, args.png
    if args.no_save:
        return None, None
    name = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return args.out / f"{name}.json", args.out / f"{name}.png"


def _config(args: argparse.Namespace, **load: object) -> LoadConfig:
    return LoadConfig(
        address=args.address,
        collection=args.collection,
        mix=parse_mix(args.mix),
        k=args.k,
        with_payload=not args.no_payload,
        vectors=args.vectors,
        images=args.images,
        words=args.words,
        seed=args.seed,
        engine=args.engine,
        api_key=args.api_key or os.environ.get("VISIONSEARCH_API_KEY") or None,
        tls=args.tls,
        root_certificates=args.ca,
        timeout_s=args.timeout,
        connect_timeout_s=args.connect_timeout,
        **load,  # type: ignore[arg-type]
    )


def _run(args: argparse.Namespace) -> int:
    from visionsearch_client.loadtest.runner import run

    config = _config(
        args,
        mode=args.mode,
        concurrency=args.concurrency,
        rate=args.rate,
        arrival=args.arrival,
        max_in_flight=args.max_in_flight,
        duration_s=args.duration,
        max_requests=args.requests,
        warmup_s=args.warmup,
    )
    report = run(config)
    print(report.table())
    json_path, png_path = _outputs(args, "loadtest")
    if json_path is not None:
        print(f"wrote {report.save_json(json_path)}")
    if png_path is not None:
        from visionsearch_client.loadtest.plot import save_png

        print(f"wrote {save_png(report, png_path)}")
    return EXIT_OK


def _sweep(args: argparse.Namespace) -> int:
    from visionsearch_client.loadtest.report import SweepStep
    from visionsearch_client.loadtest.sweep import sweep

    config = _config(
        args,
        mode="open",
        arrival=args.arrival,
        max_in_flight=args.max_in_flight,
        duration_s=args.step_duration,
        warmup_s=args.warmup,
    )

    def progress(s: SweepStep) -> None:
        verdict = "held" if s.held else f"broke: {s.reason}"
        print(
            f"  {s.offered_rate:9.1f} req/s offered: achieved {s.achieved_rate:.1f}, p99 {s.p99_ms:.3f} ms, "
            f"errors {100 * s.error_rate:.2f}% -> {verdict}",
            flush=True,
        )

    print(
        f"sweep from {args.start:g} req/s, p99 bound {args.p99_bound_ms:g} ms, "
        f"{args.step_duration:g} s per step",
        flush=True,
    )
    report = sweep(
        config,
        start_rate=args.start,
        factor=None if args.step is not None else (args.factor or 1.5),
        step=args.step,
        p99_bound_ms=args.p99_bound_ms,
        max_steps=args.max_steps,
        attempts=args.attempts,
        max_error_rate=args.max_error_rate,
        min_achieved_ratio=args.min_achieved,
        on_step=progress,
    )
    print(report.table())
    json_path, png_path = _outputs(args, "sweep")
    if json_path is not None:
        print(f"wrote {report.save_json(json_path)}")
    if png_path is not None:
        from visionsearch_client.loadtest.plot import save_sweep_png

        print(f"wrote {save_sweep_png(report, png_path)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "sweep", "-h", "--help"):
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    try:
        return _sweep(args) if args.command == "sweep" else _run(args)
    except LoadTestError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
