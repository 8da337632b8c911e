"""Sweep: open-loop steps at rising offered rates until one breaks the p99 bound (or errors, or falls short of
the offered rate); the highest rate that held is the answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from visionsearch_client.loadtest.config import ConfigError, LoadConfig
from visionsearch_client.loadtest.report import LAG_WARN_MS, Report, SweepReport, SweepStep, config_dict
from visionsearch_client.loadtest.runner import Target, run_in_new_loop


def rates(start_rate: float, factor: float | None, step: float | None, max_steps: int) -> list[float]:
    """The offered rates of a sweep: geometric (``factor``) or arithmetic (``step``)."""
    if not start_rate > 0:
        raise ConfigError(f"start rate must be > 0, not {start_rate}")
    if max_steps < 1:
        raise ConfigError(f"max_steps must be >= 1, not {max_steps}")
    if step is not None:
        if not step > 0:
            raise ConfigError(f"step must be > 0, not {step}")
        return [start_rate + i * step for i in range(max_steps)]
    factor = 1.5 if factor is None else factor
    if not factor > 1:
        raise ConfigError(f"factor must be > 1, not {factor}")
    return [round(start_rate * factor**i, 3) for i in range(max_steps)]


def judge(
    report: Report, p99_bound_ms: float, max_error_rate: float, min_achieved_ratio: float
) -> tuple[bool, str]:
    """Whether a step held, and if not, why."""
    reasons = []
    offered = report.offered_rate or 0.0
    if report.ok == 0:
        reasons.append("no successful requests")
    elif report.latency_ms["p99"] > p99_bound_ms:
        reasons.append(f"p99 {report.latency_ms['p99']:.3f} ms > {p99_bound_ms:g} ms")
    if report.error_rate > max_error_rate:
        reasons.append(f"error rate {100 * report.error_rate:.2f}% > {100 * max_error_rate:g}%")
    if report.throughput < min_achieved_ratio * offered:
        reasons.append(f"achieved {report.throughput:.1f} req/s < {100 * min_achieved_ratio:g}% of offered")
    if reasons and report.lag_ms is not None and report.lag_ms["p99"] > LAG_WARN_MS:
        reasons.append(f"generator lag p99 {report.lag_ms['p99']:.1f} ms: the client may be the bottleneck")
    return not reasons, "; ".join(reasons)


async def sweep_async(
    config: LoadConfig,
    *,
    start_rate: float,
    p99_bound_ms: float,
    factor: float | None = 1.5,
    step: float | None = None,
    max_steps: int = 12,
    max_error_rate: float = 0.01,
    min_achieved_ratio: float = 0.95,
    on_step: Callable[[SweepStep], None] | None = None,
    attempts: int = 1,
) -> SweepReport:
    """``sweep`` for callers already inside an event loop."""
    if not p99_bound_ms > 0:
        raise ConfigError(f"p99 bound must be > 0 ms, not {p99_bound_ms}")
    if attempts < 1:
        raise ConfigError(f"attempts must be >= 1, not {attempts}")
    plan = rates(start_rate, factor, step, max_steps)
    base = replace(config, mode="open", rate=plan[0])
    target = await Target.open(base)
    steps: list[SweepStep] = []
    reports: list[Report] = []
    held_rate: float | None = None
    stopped = f"reached max_steps ({max_steps})"
    try:
        for rate in plan:
            for _ in range(attempts):
                report = await target.run(replace(base, rate=rate))
                held, reason = judge(report, p99_bound_ms, max_error_rate, min_achieved_ratio)
                lat = report.latency_ms
                s = SweepStep(
                    offered_rate=rate,
                    achieved_rate=report.throughput,
                    p50_ms=lat["p50"],
                    p99_ms=lat["p99"],
                    p999_ms=lat["p999"],
                    error_rate=round(report.error_rate, 6),
                    lag_p99_ms=report.lag_ms["p99"] if report.lag_ms else 0.0,
                    held=held,
                    reason=reason,
                )
                steps.append(s)
                reports.append(report)
                if on_step is not None:
                    on_step(s)
                if held:
                    break
            if not held:
                stopped = f"{rate:g} req/s did not hold: {reason}"
                break
            held_rate = rate
    finally:
        await target.close()
    return SweepReport(
        p99_bound_ms=p99_bound_ms,
        highest_rate_held=held_rate,
        stopped_because=stopped,
        steps=steps,
        config=config_dict(base),
        reports=reports,
    )


def sweep(
    config: LoadConfig,
    *,
    start_rate: float,
    p99_bound_ms: float,
    factor: float | None = 1.5,
    step: float | None = None,
    max_steps: int = 12,
    max_error_rate: float = 0.01,
    min_achieved_ratio: float = 0.95,
    on_step: Callable[[SweepStep], None] | None = None,
    attempts: int = 1,
) -> SweepReport:
    """Run open-loop steps of ``config`` (its duration, warm-up, mix, ...) at ``start_rate``, then
    ``start_rate * factor**i`` (or ``start_rate + i * step``), until a step's p99 exceeds ``p99_bound_ms``,
    its error rate exceeds ``max_error_rate`` or its achieved throughput falls below ``min_achieved_ratio`` of
    the offered rate, or ``max_steps`` ran. With ``attempts`` > 1 a step that breaks the rules is run again,
    up to that many times in all, and holds if one attempt does: a hiccup of the machine (it shows as the
    generator's lag) then does not end the sweep. Every attempt is in the report. The server is checked and
    the requests prepared once."""
    return run_in_new_loop(
        sweep_async(
            config,
            start_rate=start_rate,
            p99_bound_ms=p99_bound_ms,
            factor=factor,
            step=step,
            max_steps=max_steps,
            max_error_rate=max_error_rate,
            min_achieved_ratio=min_achieved_ratio,
            on_step=on_step,
            attempts=attempts,
        )
    )
