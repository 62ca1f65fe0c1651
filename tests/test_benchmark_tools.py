"""The benchmark scripts run end to end on tiny problems (their figures are read by people, not asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def run_tool(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOLS / name), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("recipe, backbone", [("market1501", "resnet18"), ("cuhk03", "mobilenetv2")])
def test_benchmark_train_reports_both_variants(recipe, backbone):
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
    out = run_tool("benchmark_rerank.py", "--size", "small", "--dim", "64")
    for needle in ("floor", "sparse", "baseline", "sparse / floor time", "baseline / sparse time"):
        assert needle in out
