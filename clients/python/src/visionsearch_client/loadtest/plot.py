"""PNG charts (matplotlib's Agg canvas, without pyplot, so importing this changes no global backend): a run's
latency over time and its latency distribution; a sweep's p99 against the offered rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from visionsearch_client.loadtest.report import Report, SweepReport

MAX_POINTS = 50_000  # scatter at most this many requests (an even subsample beyond)
QUANTILE_TICKS = (0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)


def save_png(report: Report, path: str | Path) -> Path:
    """Two panels: every request's latency over time with p50/p99 per interval (errors marked in red), and
    the latency distribution by percentile (x: 1/(1-q) on a log scale, the usual HDR histogram plot)."""
    if report.samples is None:
        raise ValueError("this report carries no samples (it was loaded from JSON?): nothing to plot")
    s = report.samples
    fig = _figure(13, 4.8)
    ax_t, ax_d = fig.subplots(1, 2)
    title = (
        f"closed loop, {report.concurrency} callers"
        if report.mode == "closed"
        else f"open loop, {report.offered_rate:g} req/s offered"
    )
    fig.suptitle(
        f"visionsearch load test: {title}; {report.throughput:.0f} req/s achieved, "
        f"{report.requests} requests ({report.engine} engine)"
    )

    ok = s.ok
    t, lat = s.scheduled_s[ok], s.latency_s[ok] * 1000
    pick = _even(len(t))
    ax_t.scatter(
        t[pick],
        lat[pick],
        s=3 if len(pick) > 5000 else 8,
        alpha=0.35,
        color="tab:blue",
        linewidths=0,
        label="request",
    )
    if (~ok).any():
        err_pick = _even(int((~ok).sum()))
        ax_t.scatter(
            s.scheduled_s[~ok][err_pick],
            s.latency_s[~ok][err_pick] * 1000,
            s=10,
            marker="x",
            color="tab:red",
            label="error",
        )
    centres, p50, p99 = _bucketed(t, lat)
    if len(centres):
        ax_t.plot(centres, p50, color="tab:green", marker="o", ms=3, label="p50 per interval")
        ax_t.plot(centres, p99, color="tab:orange", marker="o", ms=3, label="p99 per interval")
    if len(lat) and lat.max() > 20 * max(float(np.median(lat)), 1e-3):  # a long tail: log scale, plain labels
        ax_t.set_yscale("log")
        ax_t.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax_t.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    else:
        ax_t.set_ylim(bottom=0)
    ax_t.set_xlabel("scheduled time in the measured window (s)")
    ax_t.set_ylabel("latency (ms)")
    ax_t.set_title("latency over time")
    ax_t.grid(True, which="both", alpha=0.3)
    ax_t.legend(loc="best", fontsize=8)

    if len(lat):
        ordered = np.sort(lat)
        q = (np.arange(len(ordered)) + 0.5) / len(ordered)
        ax_d.plot(1 / (1 - q), ordered, color="tab:blue", drawstyle="steps-post")
        for name, quantile in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            value = report.latency_ms[name]
            ax_d.plot([1 / (1 - quantile)], [value], "o", color="tab:orange")
            ax_d.annotate(
                f"{name} {value:.2f}",
                (1 / (1 - quantile), value),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=8,
            )
        ticks = [qt for qt in QUANTILE_TICKS if qt <= 1 - 0.5 / len(ordered)] or [0.5]
        ax_d.set_xscale("log")
        ax_d.set_xticks([1 / (1 - qt) for qt in ticks], [f"{100 * qt:g}%" for qt in ticks])
        ax_d.minorticks_off()
    ax_d.set_xlabel("percentile")
    ax_d.set_ylabel("latency (ms)")
    ax_d.set_title("latency distribution (successes, HDR percentiles marked)")
    ax_d.grid(True, alpha=0.3)
    return _save(fig, path)


def save_sweep_png(report: SweepReport, path: str | Path) -> Path:
    """p50/p99 against the offered rate, with the bound and the highest rate held; achieved rate beside."""
    fig = _figure(12, 4.5)
    ax_l, ax_r = fig.subplots(1, 2)
    offered = [s.offered_rate for s in report.steps]
    ax_l.plot(offered, [s.p99_ms for s in report.steps], "o-", color="tab:orange", label="p99")
    ax_l.plot(offered, [s.p50_ms for s in report.steps], "o-", color="tab:green", label="p50")
    ax_l.axhline(
        report.p99_bound_ms, color="tab:red", linestyle="--", label=f"p99 bound {report.p99_bound_ms:g} ms"
    )
    if report.highest_rate_held is not None:
        ax_l.axvline(
            report.highest_rate_held,
            color="tab:gray",
            linestyle=":",
            label=f"highest held {report.highest_rate_held:g} req/s",
        )
    ax_l.set_yscale("log")  # the step that breaks the bound is often orders of magnitude above the rest
    ax_l.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_l.set_xlabel("offered rate (req/s)")
    ax_l.set_ylabel("latency (ms)")
    ax_l.set_title("latency vs offered rate")
    ax_l.grid(True, alpha=0.3)
    ax_l.legend(fontsize=8)
    ax_r.plot(offered, [s.achieved_rate for s in report.steps], "o-", label="achieved")
    if offered:
        ax_r.plot(
            [0, max(offered)], [0, max(offered)], color="tab:gray", linestyle=":", label="achieved = offered"
        )
    ax_r.set_xlabel("offered rate (req/s)")
    ax_r.set_ylabel("achieved rate (req/s)")
    ax_r.set_title("throughput")
    ax_r.grid(True, alpha=0.3)
    ax_r.legend(fontsize=8)
    fig.suptitle("visionsearch load test sweep")
    return _save(fig, path)


def _bucketed(t: np.ndarray, lat: np.ndarray, buckets: int = 30) -> tuple[np.ndarray, ...]:
    """p50 and p99 of the latencies in up to ``buckets`` intervals (>= 0.1 s) of scheduled time."""
    if len(t) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    width = max(0.1, float(t.max()) / buckets)
    index = np.floor(t / width).astype(np.int64)
    centres, p50, p99 = [], [], []
    for b in np.unique(index):
        chunk = lat[index == b]
        centres.append((b + 0.5) * width)
        p50.append(np.percentile(chunk, 50))
        p99.append(np.percentile(chunk, 99))
    return np.array(centres), np.array(p50), np.array(p99)


def _even(n: int) -> np.ndarray:
    return np.linspace(0, n - 1, min(n, MAX_POINTS)).astype(np.int64) if n else np.zeros(0, dtype=np.int64)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=100, format="png")
    return p
