"""bench/gpu.py's arithmetic and its CPU-side parts, run here; the GPU runs themselves need `make bench-gpu` on a
CUDA machine (none here)."""

import json

import pytest

from bench import gpu


@pytest.mark.parametrize("shape, params", [("1b", 1_235_814_400), ("3b", 3_212_749_824)])
def test_the_shapes_are_llama_3_2s(shape, params):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gpu.llama_config(shape))
    assert sum(p.numel() for p in model.parameters()) == params  # Llama-3.2-1B: 1.24B, -3B: 3.21B


def test_flops_per_token_is_six_times_the_parameters_a_token_passes_plus_attention():
    config = gpu.llama_config("1b")
    norms = (2 * 16 + 1) * 2048
    assert gpu.flops_per_token(config, 0) == 6 * (1_235_814_400 - norms)  # the tied LM head counted as a matmul
    assert gpu.flops_per_token(config, 1024) - gpu.flops_per_token(config, 0) == 6 * 16 * 32 * 64 * 1024


def test_mfu_against_the_devices_bf16_peak(monkeypatch):
    monkeypatch.delenv("SLMFORGE_GPU_PEAK_TFLOPS", raising=False)
    assert gpu.peak_tflops("NVIDIA H200") == 989.0 and gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and gpu.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and gpu.peak_tflops("NVIDIA GeForce RTX 4090") is None
    flops = gpu.flops_per_token(gpu.llama_config("1b"), 1024)
    assert gpu.mfu(41_285, flops, "NVIDIA H200") == round(41_285 * flops / 989e12, 4)
    assert gpu.mfu(41_285, flops, "Unknown GPU") is None
    monkeypatch.setenv("SLMFORGE_GPU_PEAK_TFLOPS", "100")
    assert gpu.mfu(1000, 1e9, "Unknown GPU") == 0.01


def test_the_summary_gives_the_ratios_of_the_goals_and_keeps_every_run():
    runs = {"1b": {"ours_80gb": {"tokens_per_s": 40000.0, "peak_reserved_gb": 18.0, "mfu": 0.4},
                   "stage_before": {"tokens_per_s": 10000.0}, "trl_naive": {"tokens_per_s": 2000.0},
                   "ceiling": {"tokens_per_s": 40000.0}, "ours_24gb": {"error": "out of memory"}}}
    keys = gpu.summarise(runs, "NVIDIA H200", 20)
    assert keys["gpu.device"] == "NVIDIA H200" and keys["gpu.runs"] == runs
    assert keys["gpu.1b.ours_80gb.fraction_of_ceiling"] == 1.0
    assert keys["gpu.1b.ours_80gb.speedup_vs_stage_before"] == 4.0
    assert keys["gpu.1b.ours_80gb.speedup_vs_trl_naive"] == 20.0
    assert keys["gpu.1b.ours_80gb.peak_reserved_gb"] == 18.0 and "gpu.1b.ours_24gb.tokens_per_s" not in keys


def test_results_keep_every_other_key(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"train.speedup_vs_naive": 2.5, "gpu.old": 1}))
    merged = gpu.merge_results(path, {"gpu.device": "X"})
    assert merged == {"train.speedup_vs_naive": 2.5, "gpu.device": "X"} == json.loads(path.read_text())


def test_the_benchmark_rows_come_from_the_projects_own_collect_and_chatml():
    rows = gpu.chat_rows()
    assert len(rows) > 300 and all(r["messages"][-1]["role"] == "assistant" for r in rows)


def test_without_a_gpu_it_stops_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit) as err:
        gpu.main([])
    assert "no CUDA GPU" in str(err.value) and "\n" not in str(err.value)
