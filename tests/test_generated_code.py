"""The committed stubs are exactly what the pinned generators make from protos/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh() -> None:
    venv = Path(sys.executable).parent.parent
    out = subprocess.run(
        ["bash", "scripts/gen_protos.sh", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "VISIONSEARCH_VENV": str(venv)},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "fresh" in out.stdout
