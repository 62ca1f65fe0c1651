"""benchmark_train runs end to end on a tiny problem and measures both variants (its figures are read by
people, not asserted). The re-ranking benchmark is not run here: what it times is pinned by test_rerank.py."""

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
        "data.num_instances=2", "data.synthetic.num_train_ids=4", "data.synthetic.num_test_ids=4",
        "data.synthetic.num_cameras=2",  # a handful of images: generating 1,536 took half the test's time
    )  # fmt: skip
    assert out.startswith(f"recipe {recipe}")
    rows = [line for line in out.splitlines() if line.startswith(("| baseline", "| framework"))]
    assert len(rows) == 2
    assert all(float(cell) > 0 for row in rows for cell in row.strip("|").split("|")[1:])

