"""GPU training choices tested on CPU: the attention kernel for packed rows (packed-equals-alone for every choice
that runs here), the loss kernel and its one-line errors, and the peak-memory estimate, whose arithmetic reproduces
the H200 measurements of design.md and whose check stops a run in one line on a (simulated) GPU too small."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from slmforge.gpu import (GB, Shape, check_fits, estimate_peak, plan_run, resolve_attention, resolve_loss_kernel)
from slmforge.errors import UserError
from slmforge.params import LoraParams, ModelParams, TrainParams, build
from tests.conftest import ROOT

# Llama-3.2-1B and -3B's shapes (their config.json), as measured on the H200
LLAMA_1B = Shape(hidden=2048, intermediate=8192, layers=16, heads=32, kv_heads=8, head_dim=64, vocab=128256, tied=True)
LLAMA_3B = Shape(hidden=3072, intermediate=8192, layers=28, heads=24, kv_heads=8, head_dim=128, vocab=128256, tied=True)
QWEN3_8B = Shape(hidden=4096, intermediate=12288, layers=36, heads=32, kv_heads=8, head_dim=128, vocab=151936,
                 tied=False)
MEASURED = [  # (shape, attention, loss kernel, peak GB on the H200 with batch 4 x 2048, NF4, LoRA r16, no checkpointing)
    (LLAMA_1B, "sdpa", "trl", 20.9), (LLAMA_1B, "flex_attention", "trl", 18.2), (LLAMA_1B, "sdpa", "liger", 17.9),
    (LLAMA_1B, "sdpa", "model", 32.3), (LLAMA_3B, "sdpa", "trl", 44.3)]


def train_profile(name: str, **overrides) -> TrainParams:
    return build(TrainParams, {**yaml.safe_load((ROOT / f"conf/train/{name}.yaml").read_text()), **overrides}, "train")


# --- attention -------------------------------------------------------------------------------------

def test_auto_attention_picks_a_kernel_that_keeps_packed_rows_apart_without_a_dense_mask(monkeypatch):
    import slmforge.gpu as gpu

    monkeypatch.setattr(gpu, "flash_attn_installed", lambda: False)
    assert resolve_attention("auto", on_cuda=True) == "flex_attention"
    assert resolve_attention("auto", on_cuda=True, packed=False) == "sdpa"
    assert resolve_attention("auto", on_cuda=False) == "sdpa"
    monkeypatch.setattr(gpu, "flash_attn_installed", lambda: True)
    assert resolve_attention("auto", on_cuda=True) == "flash_attention_2"


def test_a_soft_capped_model_never_gets_sdpa():
    from transformers import Gemma2Config

    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=32, vocab_size=64)
    assert resolve_attention("auto", on_cuda=False, config=config) == "eager"
    assert resolve_attention("auto", on_cuda=True, config=config) == "flex_attention"  # packed: soft-capping kept
    assert resolve_attention("auto", on_cuda=True, config=config, packed=False) == "eager"
    with pytest.raises(UserError, match="soft-caps"):
        resolve_attention("sdpa", on_cuda=False, config=config)


@pytest.mark.parametrize("choice, message", [("flash_attention_2", "flash-attn"), ("paged", "must be one of")])
def test_an_attention_that_cannot_run_here_is_one_line(choice, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_attention(choice, on_cuda=False)
    assert "\n" not in str(err.value)


def _packed_and_alone(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attention).eval()
    a, b = torch.randint(3, 128, (37,)).tolist(), torch.randint(3, 128, (23,)).tolist()
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)  # as the train stage collates
    packed = collator([{"input_ids": a + b, "seq_lengths": [len(a), len(b)]}])
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                         use_cache=False).logits[0, len(a):]
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits[0, len(a):]
    return together, alone, leaky


@pytest.mark.parametrize("attention", ["sdpa", "eager", "flex_attention"])
def test_an_example_packed_after_another_has_the_logits_it_has_alone(attention, monkeypatch):
    """Every attention choice that runs on CPU. flex_attention runs its reference (uncompiled) kernel here: the
    block mask built from position_ids is what keeps the examples apart, and it is the same mask compiled on a GPU
    (where torch.compile takes 15-90 s on 2 cores for the kernel alone)."""
    if attention == "flex_attention":
        import transformers.integrations.flex_attention as fa
        from torch.nn.attention.flex_attention import flex_attention

        monkeypatch.setattr(fa, "compile_friendly_flex_attention",
                            lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))
    together, alone, leaky = _packed_and_alone(attention)
    assert torch.allclose(together, alone, atol=1e-4), (together - alone).abs().max()
    assert not torch.allclose(leaky, alone, atol=1e-3)  # without position_ids the second example sees the first


# --- loss kernel -----------------------------------------------------------------------------------

def test_loss_kernel_auto_is_the_models_own_loss_on_cpu_and_fused_on_a_gpu(monkeypatch):
    import slmforge.gpu as gpu

    assert resolve_loss_kernel("auto", on_cuda=False) == "model"
    monkeypatch.setattr(gpu, "liger_installed", lambda: False)
    assert resolve_loss_kernel("auto", on_cuda=True) == "trl"
    monkeypatch.setattr(gpu, "liger_installed", lambda: True)
    assert resolve_loss_kernel("auto", on_cuda=True) == "liger"


def test_liger_without_a_gpu_is_one_line():
    with pytest.raises(UserError, match="liger.*CUDA") as err:
        resolve_loss_kernel("liger", on_cuda=False)
    assert "\n" not in str(err.value)


def test_the_liger_loss_kernel_reaches_the_trainer_config(tmp_path):
    from slmforge.training import sft_config

    model = build(ModelParams, yaml.safe_load((ROOT / "conf/model/smollm2_135m.yaml").read_text()), "model")
    params = train_profile("gpu_24gb")
    config = sft_config(params, tmp_path, model, loss_kernel="liger")
    assert config.use_liger_kernel and config.activation_checkpointing
    assert not sft_config(train_profile("gpu_80gb"), tmp_path, model, loss_kernel="trl").use_liger_kernel


# --- peak memory -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, attention, loss, measured_gb", MEASURED)
def test_the_estimate_reproduces_the_h200_measurements(shape, attention, loss, measured_gb):
    est = estimate_peak(shape, lora_r=16, batch_size=4, seq_len=2048, load_in_4bit=True, gradient_checkpointing=False,
                        attention=attention, loss_kernel=loss)
    assert est["total"] / GB == pytest.approx(measured_gb, rel=0.03)
    assert sum(v for k, v in est.items() if k != "total") == est["total"]


def test_the_estimate_counts_weights_and_adapters_from_the_shape():
    est = estimate_peak(LLAMA_1B, lora_r=16, batch_size=1, seq_len=1, load_in_4bit=True, gradient_checkpointing=False,
                        attention="flex_attention", loss_kernel="trl")
    assert LLAMA_1B.linear_params() == 973_078_528  # Llama-3.2-1B's 1.24B parameters less its 262.7M embedding
    assert est["weights"] == int(973_078_528 * (0.5 + 1 / 64) + 128256 * 2048 * 2)
    assert est["lora_and_optimizer"] == 16 * 16 * 44_032 * 16  # r x (in + out) summed over q k v o gate up down


def test_the_24gb_profile_fits_the_3b_shape_under_22_gb_and_the_8b_under_24():
    for shape, ceiling in ((LLAMA_3B, 22), (QWEN3_8B, 22)):
        est = estimate_peak(shape, lora_r=16, batch_size=4, seq_len=2048, load_in_4bit=True,
                            gradient_checkpointing=True, attention="flex_attention", loss_kernel="liger")
        assert est["total"] / GB < ceiling
    no_checkpointing = estimate_peak(LLAMA_3B, lora_r=16, batch_size=4, seq_len=2048, load_in_4bit=True,
                                     gradient_checkpointing=False, attention="sdpa", loss_kernel="trl")
    assert no_checkpointing["total"] / GB > 40  # the old train=gpu profile's 44.3 GB


def test_a_run_that_does_not_fit_the_gpu_found_stops_in_one_line():
    est = estimate_peak(LLAMA_3B, lora_r=16, batch_size=4, seq_len=2048, load_in_4bit=True,
                        gradient_checkpointing=False, attention="sdpa", loss_kernel="trl")
    with pytest.raises(UserError) as err:
        check_fits(est, ("NVIDIA GeForce RTX 4090", 24 * 2**30), "model llama32_3b with train=gpu_80gb")
    line = str(err.value)
    assert "\n" not in line and "44.3 GB" in line and "RTX 4090" in line and "train=gpu_24gb" in line
    check_fits(est, ("NVIDIA H200", 141 * 10**9), "model llama32_3b")  # fits: no error


def test_the_train_stage_checks_before_loading_on_a_simulated_gpu(base_model, model_params, monkeypatch):
    """plan_run, as train() calls it first: the GPU's capacity simulated (no CUDA here), the model's shape read
    from models/base/config.json; SmolLM2-135M with 64k-token rows does not fit a 2 GB card, and fits 24 GB."""
    import slmforge.gpu as gpu

    lora = build(LoraParams, yaml.safe_load((ROOT / "conf/lora/r16.yaml").read_text()), "lora")
    big = train_profile("gpu_80gb", batch_size=32)
    monkeypatch.setattr(gpu, "device_memory", lambda: ("Simulated 2 GB GPU", 2 * 10**9))
    with pytest.raises(UserError, match="more than the 2.0 GB of the Simulated 2 GB GPU"):
        plan_run(model_params, lora, big, base_model[0])
    assert plan_run(model_params, lora, dataclasses.replace(big, memory_check=False), base_model[0])
    monkeypatch.setattr(gpu, "device_memory", lambda: ("Simulated 24 GB GPU", 24 * 10**9))
    plan = plan_run(model_params, lora, train_profile("gpu_24gb"), base_model[0])
    assert plan["attention"] == "sdpa" and plan["loss_kernel"] == "model" and 0 < plan["memory_estimate_gb"] < 24
