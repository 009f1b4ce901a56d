"""The benchmark harness on tiny phantoms: bm4d is always the baseline, rows carry differences to it."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/

pytest.importorskip("bm4d")
pytest.importorskip("psutil")

from benchmarks.harness import format_table, phantom_cases, run_benchmark  # noqa: E402


@pytest.mark.slow
def test_harness_runs_bm4d_as_baseline(tmp_path):
    cases = phantom_cases(scale=0.34)[1:2]  # the small slanted-edge case only
    res = run_benchmark(["gaussian"], cases, name="t", log=None, write=False)
    assert res.methods == ["bm4d", "gaussian"]
    base, other = res.rows
    assert base["d_psnr"] == 0 and other["d_psnr"] == pytest.approx(other["psnr"] - base["psnr"])
    assert base["mtf50_ratio"] is not None and base["seconds"] > 0
    path = res.write(tmp_path)
    assert json.loads(path.read_text())["baseline"] == "bm4d"
    assert "bm4d" in format_table(res)
