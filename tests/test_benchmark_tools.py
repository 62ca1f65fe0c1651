"""The benchmark scripts run end to end on tiny problems (their figures are read by people, not asserted)."""

import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run_tool(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOLS / name), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_benchmark_train_reports_both_variants():
    # The cuhk03 recipe (MobileNetV2, its own config) exercises everything the market1501 one does.
    recipe, backbone = "cuhk03", "mobilenetv2"
    out = run_tool(
        "benchmark_train.py", "--recipe", recipe, "--iters", "1", "--warmup", "0", "--num-workers", "0",
        f"model.backbone={backbone}", "data.height=32", "data.width=16", "data.ids_per_batch=2",
        "data.num_instances=2",
    )  # fmt: skip
    assert out.startswith(f"recipe {recipe}")
    rows = [line for line in out.splitlines() if line.startswith(("| baseline", "| framework"))]
    assert len(rows) == 2
    assert all(float(cell) > 0 for row in rows for cell in row.strip("|").split("|")[1:])


def test_benchmark_rerank_small_problem_prints_every_ratio():
    # The baseline measured on 800 of the 3000 nodes and extrapolated (the path large sizes take).
    out = run_tool("benchmark_rerank.py", "--size", "small", "--dim", "64", "--baseline-nodes", "800")
    for needle in ("floor", "sparse", "baseline", "sparse / floor time", "baseline / sparse time",
                   "extrapolated ~N^2 from N=800"):
        assert needle in out
