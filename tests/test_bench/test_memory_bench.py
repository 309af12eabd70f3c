"""bench/memory.py on a tiny shape: the step runs, the memory reading is positive, the analytic model is ordered.

The bench is a script, not a package: it is imported from its path. The step runs in a fresh process (as the
command does) so the RSS baseline and peak belong to the bench alone.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "memory.py"
TINY = ["--layers", "2", "--hidden", "256", "--ffn", "512", "--heads", "4", "--kv-heads", "2", "--head-dim", "64",
        "--vocab", "4096", "--pre-seq-len", "16", "--source-len", "8", "--target-len", "8"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


def test_int4_step_runs_and_reports_positive_peak(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--mode", "int4", "--device", "cpu", *TINY, "--json-out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = out.read_text().splitlines()
    result = json.loads(line)
    assert result["mode"] == "int4" and result["device"] == "cpu"
    assert result["memory_kind"] == "cpu_peak_rss_minus_idle_rss"
    assert result["prefix_changed"] is True
    assert math.isfinite(result["loss"]) and result["loss"] > 0
    assert math.isfinite(result["prefix_grad_norm"]) and result["prefix_grad_norm"] > 0
    assert result["peak_bytes"] > 0
    # the prefix of the tiny shape: pre_seq_len x (layers * 2 * kv_heads * head_dim)
    assert result["trainable_parameters"] == 16 * 2 * 2 * 2 * 64
    # the 4-bit linears really hold 4-bit weights: counted bytes equal the analytic weight bytes
    assert result["counted_weight_bytes"] == pytest.approx(result["analytic"]["weights"], rel=0.01)
    # the printed table row and the JSON line
    assert "| int4 |" in proc.stdout and "CPU RSS" in proc.stdout
    assert line in proc.stdout


def test_analytic_weight_bytes_shrink_with_quantization(bench):
    for shape in (bench.Shape(), bench.Shape(layers=2, hidden=256, ffn=512, heads=4, head_dim=64, vocab=4096)):
        weights = {m: bench.analytic_breakdown(shape, m)["weights"] for m in ("int4", "int8", "fp16")}
        assert weights["int4"] < weights["int8"] < weights["fp16"], weights
        linears = {m: bench.analytic_breakdown(shape, m)["weights_linears"] for m in ("int4", "int8", "fp16")}
        assert linears["fp16"] / linears["int4"] > 3.5  # 16 bits vs 4.5 bits per weight (fp32 absmax per 64)


def test_analytic_full_size_int4_numbers(bench):
    a = bench.analytic_breakdown(bench.Shape(), "int4")
    assert 6.0e9 < bench.Shape().parameter_count() < 6.4e9  # ChatGLM3-6B: 6.24B parameters
    assert a["weights_embeddings"] == a["weights_lm_head"] == 2 * 65024 * 4096
    assert 3.0e9 < a["weights_linears"] < 3.4e9
    assert a["prefix_params_grads_adamw"] == 16 * 128 * 28 * 2 * 2 * 128
    assert a["total"] < 5.0e9


def test_chunked_quantization_equals_whole_tensor_quantization(bench):
    import bitsandbytes.functional as F

    weight = torch.randn(300, 256, dtype=torch.bfloat16)
    for double_quant in (False, True):
        whole, whole_state = F.quantize_4bit(weight, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
        packed, state = bench.quantize_4bit_by_rows(300, 256, torch.bfloat16, torch.device("cpu"), None, 0, "nf4", 64,
                                                    double_quant, chunks=weight.split(64))
        assert torch.equal(packed, whole)
        assert torch.equal(F.dequantize_4bit(packed, state), F.dequantize_4bit(whole, whole_state))
