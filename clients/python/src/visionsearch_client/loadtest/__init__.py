"""Load testing for visionsearch (install with ``pip install "visionsearch-client[loadtest]"``).

    from visionsearch_client.loadtest import LoadConfig, run, sweep, save_png

    report = run(LoadConfig(address="127.0.0.1:50051", mode="open", rate=500, duration_s=10,
                            mix={"search_vector": 8, "tag": 1, "embed": 1}))
    print(report.table()); report.save_json("run.json"); save_png(report, "run.png")

    best = sweep(LoadConfig(duration_s=5), start_rate=200, factor=1.5, p99_bound_ms=3).highest_rate_held

``LoadConfig(engine="native")`` sends the same requests from ``visionsearch-loadgen`` (C++, ``make clients``).

The command line is ``visionsearch-loadtest`` (or ``python -m visionsearch_client.loadtest``).
"""

from visionsearch_client.loadtest.config import (
    KINDS,
    ConfigError,
    LoadConfig,
    LoadTestError,
    UnreachableError,
    parse_mix,
)
from visionsearch_client.loadtest.native import NativeEngineError
from visionsearch_client.loadtest.plot import save_png, save_sweep_png
from visionsearch_client.loadtest.report import Report, Samples, SweepReport, SweepStep
from visionsearch_client.loadtest.runner import run, run_async
from visionsearch_client.loadtest.sweep import sweep, sweep_async

__all__ = [
    "KINDS",
    "ConfigError",
    "LoadConfig",
    "LoadTestError",
    "NativeEngineError",
    "Report",
    "Samples",
    "SweepReport",
    "SweepStep",
    "UnreachableError",
    "parse_mix",
    "run",
    "run_async",
    "save_png",
    "save_sweep_png",
    "sweep",
    "sweep_async",
]
