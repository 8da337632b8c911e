"""Results: raw samples → ``Report`` (HDR-histogram percentiles, errors by status, per-second series),
JSON and the printed table; ``SweepReport`` for a rate sweep."""

from __future__ import annotations

import json
from array import array
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from visionsearch_client.loadtest.config import KINDS, LoadConfig

# Latencies are recorded in microseconds from 1 us to 1 hour with 3 significant digits (0.1% resolution).
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 3_600_000_000
HIST_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
OK = "OK"


class Recorder:
    """Per-request samples of the measured window, in compact arrays (a few bytes per request)."""

    def __init__(self) -> None:
        self.scheduled = array("d")  # seconds after the measured window started
        self.latency = array("d")  # seconds, from the scheduled (open loop) or actual (closed loop) send
        self.lag = array("d")  # seconds the send was later than scheduled (0 in a closed loop)
        self.kind = array("b")  # index into KINDS
        self.status = array("b")  # index into self.status_names; 0 is OK
        self.status_names: list[str] = [OK]
        self._status_index: dict[str, int] = {OK: 0}

    def add(self, scheduled: float, latency: float, lag: float, kind: int, status: str) -> None:
        self.scheduled.append(scheduled)
        self.latency.append(latency)
        self.lag.append(lag)
        self.kind.append(kind)
        self.status.append(self._code(status))

    def extend(
        self,
        scheduled: np.ndarray,
        latency: np.ndarray,
        lag: np.ndarray,
        kind: np.ndarray,
        status_codes: np.ndarray,
        status_names: Mapping[int, str],
    ) -> None:
        """Many samples at once (seconds, as in ``add``); ``status_codes`` are any integers, named by
        ``status_names`` (e.g. gRPC's numeric codes)."""
        codes = np.asarray(status_codes)
        status = np.zeros(len(codes), dtype=np.int8)
        for code in np.unique(codes):
            status[codes == code] = self._code(status_names[int(code)])
        self.scheduled.frombytes(np.asarray(scheduled, dtype=np.float64).tobytes())
        self.latency.frombytes(np.asarray(latency, dtype=np.float64).tobytes())
        self.lag.frombytes(np.asarray(lag, dtype=np.float64).tobytes())
        self.kind.frombytes(np.asarray(kind, dtype=np.int8).tobytes())
        self.status.frombytes(status.tobytes())

    def _code(self, status: str) -> int:
        code = self._status_index.get(status)
        if code is None:
            code = self._status_index[status] = len(self.status_names)
            self.status_names.append(status)
        return code

    def __len__(self) -> int:
        return len(self.latency)

    def samples(self) -> Samples:
        return Samples(
            scheduled_s=np.frombuffer(self.scheduled, dtype=np.float64).copy(),
            latency_s=np.frombuffer(self.latency, dtype=np.float64).copy(),
            lag_s=np.frombuffer(self.lag, dtype=np.float64).copy(),
            kind=np.frombuffer(self.kind, dtype=np.int8).copy(),
            status=np.frombuffer(self.status, dtype=np.int8).copy(),
            status_names=list(self.status_names),
        )


@dataclass(frozen=True)
class Samples:
    """Every recorded request of a run (for plots and custom analysis; not written to JSON)."""

    scheduled_s: np.ndarray
    latency_s: np.ndarray
    lag_s: np.ndarray
    kind: np.ndarray
    status: np.ndarray
    status_names: list[str]

    @property
    def ok(self) -> np.ndarray:
        return self.status == 0


def histogram_us(latencies_s: np.ndarray) -> HdrHistogram:
    h = HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)
    for us in np.clip(np.rint(latencies_s * 1e6), HIST_LOWEST_US, HIST_HIGHEST_US).astype(np.int64):
        h.record_value(int(us))
    return h


def percentiles_ms(h: HdrHistogram) -> dict[str, float]:
    """p50/p90/p99/p999/max/mean/min in milliseconds from an HDR histogram of microseconds (all 0 when empty).
    Each is the highest value equivalent to its bucket, so p50 <= p90 <= p99 <= p999 <= max always holds."""
    if h.get_total_count() == 0:
        return {**dict.fromkeys(PERCENTILES, 0.0), "max": 0.0, "mean": 0.0, "min": 0.0}
    out = {name: h.get_value_at_percentile(p) / 1000 for name, p in PERCENTILES.items()}
    out["max"] = h.get_max_value() / 1000
    out["mean"] = h.get_mean_value() / 1000
    out["min"] = h.get_min_value() / 1000
    return {k: round(v, 4) for k, v in out.items()}


@dataclass
class Report:
    """The outcome of one run. Latency percentiles (``latency_ms``) cover successful requests only; failed
    ones are counted in ``errors`` by gRPC status name. In an open loop a request's latency runs from its
    scheduled time, so time spent queued in the generator counts."""

    mode: str
    offered_rate: float | None  # requests/s asked for (open loop); None in a closed loop
    concurrency: int
    elapsed_s: float  # measured window start to the last completion (open loop: at least n/rate)
    requests: int  # recorded (sent in the measured window and completed or failed)
    ok: int
    errors: dict[str, int]  # by gRPC status name, e.g. {"RESOURCE_EXHAUSTED": 12}
    throughput: float  # completed requests/s (successes and failures)
    ok_throughput: float  # successful requests/s
    latency_ms: dict[str, float]  # p50 p90 p99 p999 max mean min, successes only
    lag_ms: dict[str, float] | None  # open loop: how late sends were against the schedule
    by_kind: dict[str, dict[str, Any]]
    timeline: list[dict[str, float]]  # one entry per second of scheduled time
    config: dict[str, Any]
    histogram: str = ""  # the HDR histogram (microseconds), base64 as hdrh's encode(); decode to merge runs
    engine: str = "python"  # which generator ran: "python" (grpc.aio) or "native" (visionsearch-loadgen)
    # What generating the load cost: CPU seconds of the generator's process (all its threads) per second of
    # wall time from the first send to the last completion ("cores"), and per request sent (warm-up
    # included). The Python engine counts its whole process, so anything else in it (an in-process server,
    # say) counts too; the native engine is a process of its own.
    generator_cpu: dict[str, float] | None = None
    samples: Samples | None = field(default=None, repr=False, compare=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        d["error_rate"] = self.error_rate
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str | Path) -> Path:
        return _write(path, self.to_json())

    def table(self) -> str:
        """A compact human summary."""
        lat = self.latency_ms
        head = (
            f"closed loop, {self.concurrency} callers"
            if self.mode == "closed"
            else f"open loop at {self.offered_rate:g} req/s ({self.config.get('arrival')} arrivals)"
        )
        lines = [
            f"{head}: {self.requests} requests in {self.elapsed_s:.2f} s",
            f"  throughput   {self.throughput:10.1f} req/s   (successful {self.ok_throughput:.1f} req/s)",
            "  latency ms   " + "  ".join(f"{k} {lat[k]:.3f}" for k in ("p50", "p90", "p99", "p999", "max")),
            f"               mean {lat['mean']:.3f}  (successes only, {self.ok} requests)",
        ]
        if self.errors:
            lines.append(
                f"  errors       {self.error_count} ({100 * self.error_rate:.2f}%): "
                + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items(), key=lambda kv: -kv[1]))
            )
        else:
            lines.append("  errors       none")
        if self.lag_ms is not None:
            lag = self.lag_ms
            lines.append(
                f"  generator lag ms  p50 {lag['p50']:.3f}  p99 {lag['p99']:.3f}  max {lag['max']:.3f}"
            )
            if lag["p99"] > LAG_WARN_MS:
                lines.append(
                    f"  warning: sends ran up to {lag['p99']:.1f} ms late (p99): the load generator, not "
                    "only the server, may be the bottleneck (or max_in_flight binds)"
                )
        if self.generator_cpu is not None:
            cost = self.generator_cpu
            who = "native engine (visionsearch-loadgen)" if self.engine == "native" else "python engine"
            lines.append(
                f"  generator    {who}: {cost['cores']:.3f} CPU s per wall s, "
                f"{cost['us_per_request']:.1f} us CPU per request"
            )
        if len(self.by_kind) > 1:
            for kind, s in self.by_kind.items():
                lines.append(
                    f"  {kind:<13} {s['requests']:7d} req  p50 {s['p50_ms']:.3f}  p99 {s['p99_ms']:.3f} ms"
                    + (f"  errors {s['errors']}" if s["errors"] else "")
                )
        return "\n".join(lines)


# Open-loop sends later than this at p99 get a warning: the generator may be what limits the rate.
LAG_WARN_MS = 5.0


def generator_cost(user_s: float, sys_s: float, wall_s: float, sent: int) -> dict[str, float]:
    cpu = user_s + sys_s
    return {
        "cores": round(cpu / wall_s, 6) if wall_s > 0 else 0.0,
        "cpu_s": round(cpu, 6),
        "user_s": round(user_s, 6),
        "sys_s": round(sys_s, 6),
        "wall_s": round(wall_s, 6),
        "sent": sent,
        "us_per_request": round(cpu / sent * 1e6, 3) if sent else 0.0,
    }


def elapsed_from(recorder: Recorder, config: LoadConfig) -> float:
    """Seconds from the measured window's start to its last completion; in an open loop at least the span
    of the schedule (n requests take n/rate s), so a server that keeps up achieves the offered rate."""
    if not len(recorder):
        return 0.0
    scheduled = np.frombuffer(recorder.scheduled, dtype=np.float64)
    last_done = float((scheduled + np.frombuffer(recorder.latency, dtype=np.float64)).max())
    if config.mode == "open":
        return max(last_done, float(scheduled.max()) + 1 / config.rate)
    return last_done


def build_report(
    config: LoadConfig,
    recorder: Recorder,
    elapsed_s: float,
    *,
    offered_rate: float | None,
    engine: str = "python",
    generator_cpu: dict[str, float] | None = None,
) -> Report:
    s = recorder.samples()
    ok = s.ok
    hist = histogram_us(s.latency_s[ok])
    errors: dict[str, int] = {}
    for code, name in enumerate(s.status_names):
        if code and (n := int((s.status == code).sum())):
            errors[name] = n
    n = len(s.latency_s)
    by_kind: dict[str, dict[str, Any]] = {}
    for i, kind in enumerate(KINDS):
        mask = s.kind == i
        if not mask.any():
            continue
        kh = percentiles_ms(histogram_us(s.latency_s[mask & ok]))
        by_kind[kind] = {
            "requests": int(mask.sum()),
            "ok": int((mask & ok).sum()),
            "errors": int((mask & ~ok).sum()),
            "p50_ms": kh["p50"],
            "p99_ms": kh["p99"],
            "max_ms": kh["max"],
        }
    lag = None
    if config.mode == "open":
        lag_h = histogram_us(np.maximum(s.lag_s, 1e-6))
        lag = {k: v for k, v in percentiles_ms(lag_h).items() if k in ("p50", "p90", "p99", "max", "mean")}
    return Report(
        mode=config.mode,
        offered_rate=offered_rate,
        concurrency=config.concurrency if config.mode == "closed" else config.max_in_flight,
        elapsed_s=round(elapsed_s, 4),
        requests=n,
        ok=int(ok.sum()),
        errors=errors,
        throughput=round(n / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        ok_throughput=round(int(ok.sum()) / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        latency_ms=percentiles_ms(hist),
        lag_ms=lag,
        by_kind=by_kind,
        timeline=timeline(s),
        config=config_dict(config),
        histogram=hist.encode().decode() if hist.get_total_count() else "",
        engine=engine,
        generator_cpu=generator_cpu,
        samples=s,
    )


def timeline(s: Samples) -> list[dict[str, float]]:
    """Per second of scheduled time: requests, successes, errors and success latency p50/p99/max in ms."""
    if len(s.scheduled_s) == 0:
        return []
    second = np.floor(s.scheduled_s).astype(np.int64)
    out = []
    for sec in range(int(second.max()) + 1):
        mask = second == sec
        ok_lat = s.latency_s[mask & s.ok] * 1000
        row = {
            "t": float(sec),
            "requests": int(mask.sum()),
            "ok": len(ok_lat),
            "errors": int((mask & ~s.ok).sum()),
        }
        if len(ok_lat):
            row.update(
                p50_ms=round(float(np.percentile(ok_lat, 50)), 4),
                p99_ms=round(float(np.percentile(ok_lat, 99)), 4),
                max_ms=round(float(ok_lat.max()), 4),
            )
        out.append(row)
    return out


def config_dict(config: LoadConfig) -> dict[str, Any]:
    d = asdict(config)
    for key in ("vectors", "images"):
        if d[key] is not None:
            d[key] = str(d[key])
    d["mix"] = dict(config.mix)
    d["words"] = list(config.words) if config.words is not None else None
    if config.mode == "closed":
        d.pop("rate")
        d.pop("arrival")
        d.pop("max_in_flight")
    else:
        d.pop("concurrency")
    return d


@dataclass
class SweepStep:
    offered_rate: float
    achieved_rate: float  # completed requests/s
    p50_ms: float
    p99_ms: float
    p999_ms: float
    error_rate: float
    lag_p99_ms: float
    held: bool
    reason: str  # why it did not hold ("" if it held)


@dataclass
class SweepReport:
    """Open-loop steps at rising rates; ``highest_rate_held`` is the highest offered rate whose step kept
    p99 within the bound, errors within the allowed rate and achieved throughput near the offered rate
    (None if the first step already failed)."""

    p99_bound_ms: float
    highest_rate_held: float | None
    stopped_because: str
    steps: list[SweepStep]
    config: dict[str, Any]
    reports: list[Report] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p99_bound_ms": self.p99_bound_ms,
            "highest_rate_held": self.highest_rate_held,
            "stopped_because": self.stopped_because,
            "steps": [asdict(s) for s in self.steps],
            "config": self.config,
            "step_reports": [r.to_dict() for r in self.reports],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save_json(self, path: str | Path) -> Path:
        return _write(path, self.to_json())

    def table(self) -> str:
        cols = f"{'offered':>9} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>7}"
        lines = [f"  {cols}  held"]
        for s in self.steps:
            lines.append(
                f"  {s.offered_rate:9.1f} {s.achieved_rate:9.1f} {s.p50_ms:8.3f} {s.p99_ms:8.3f} "
                f"{s.p999_ms:9.3f} {100 * s.error_rate:6.2f}%  {'yes' if s.held else 'no: ' + s.reason}"
            )
        held = f"{self.highest_rate_held:g} req/s" if self.highest_rate_held is not None else "none"
        lines.append(
            f"highest rate held (p99 <= {self.p99_bound_ms:g} ms): {held}; stopped: {self.stopped_because}"
        )
        return "\n".join(lines)


def _write(path: str | Path, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")
    return p
