"""benchmarks/gpu_smoke.sh --dry-run: the GPU smoke check's code path on CPU (tiny-width LLaVA-1.5 layout, 2 layers)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.sh"


def test_the_dry_run_reports_each_step_kind_beside_the_plan():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^(SFT|SOREB|SOREB, full logits)\s+([\d.]+)\s+([\d.]+|-)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)}
    assert set(rows) == {"SFT", "SOREB", "SOREB, full logits"}, out
    for kind in ("SFT", "SOREB"):
        peak, plan = float(rows[kind][0]), float(rows[kind][1])
        assert peak > 0 and plan > 0  # measured and predicted
    assert float(rows["SOREB"][3]) > 0  # a SOREB step samples
    assert "kept-logit passes: peak" in out and "SOREB step / (generation + SFT step)" in out
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr
