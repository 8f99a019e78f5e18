"""The GPU benchmark scripts refuse clearly on a machine without CUDA (CI has none), instead of crashing."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench_kernels.py", "bench_model.py"])
def test_gpu_benchmarks_refuse_on_cpu(script):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / script)], capture_output=True, text=True,
                            timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin",
                                              "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "CUDA" in message and "Traceback" not in message, message[-2000:]


def test_bench_model_smoke_on_cpu(tmp_path):
    """The whole-model benchmark's own logic, on a tiny model on the CPU."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_model.py"), "--size", "tiny", "--device", "cpu", "--batch", "1",
         "--length", "32", "--decode-tokens", "3", "--no-builtin", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    rows = json.loads(out.read_text())["rows"]
    assert {r["model"] for r in rows} == {"paper xLSTM[7:1]", "large (7B block)"}
    assert all(r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0 and r["train_tok_s"] > 0 for r in rows)
