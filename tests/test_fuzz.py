"""The atheris fuzz targets (tests/fuzz/), each for VISIONSEARCH_FUZZ_SECONDS (60 in CI; `make fuzz` runs
them longer). A finding makes the target exit non-zero and leaves its input in the work folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SECONDS = int(os.environ.get("VISIONSEARCH_FUZZ_SECONDS", "60"))


@pytest.mark.parametrize("target", ["fuzz_images", "fuzz_requests"])
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cmd = [
        sys.executable, str(ROOT / "tests" / "fuzz" / f"{target}.py"), str(corpus),
        f"-max_total_time={SECONDS}", "-rss_limit_mb=6144", "-timeout=60", "-seed=20261201",
        f"-artifact_prefix={tmp_path}/",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 300)
    tail = out.stderr[-4000:]
    assert out.returncode == 0, f"{target} found a failing input (see {tmp_path}):\n{tail}"
    runs = re.search(r"Done (\d+) runs", out.stderr)
    assert runs and int(runs.group(1)) > 100, tail
    print(f"{target}: {runs.group(1)} inputs in {SECONDS} s")
