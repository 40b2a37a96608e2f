"""GPU training throughput on Llama-3.2-1B's and -3B's shapes: ours (train=gpu_24gb and train=gpu_80gb), the train
stage as it was (SDPA, TRL's loss), TRL's SFTTrainer as it comes, and the hardware's ceiling; tokens/s, peak GPU
memory, MFU against the GPU's bf16 peak, the device's name. Written to the `gpu` key of bench/results.json.

Each (shape, mode) runs in a fresh process (its own peak memory) on a randomly initialised model of the shape
(throughput does not depend on the weights), through the project's own load_base, add_lora, training_datasets,
sft_config and sft_trainer, on the sample corpus's chat rows (made by the project's own collect and chatml code, so
no pipeline output is needed). Modes:
- ours_24gb / ours_80gb: the train stage's kernels as its profile resolves them (attention and loss_kernel auto);
- stage_before: what the train stage did before (SDPA for packed rows, TRL's loss, no checkpointing; 9,560 tokens/s
  and 20.9 GB on an H200 for the 1B shape, design.md);
- trl_naive: SFTTrainer as it comes (no packing, batch 8 padded to the longest row, its gradient checkpointing);
- ceiling: forward + backward of the same NF4 + LoRA model on 4 full rows of 2048 tokens with plain causal SDPA,
  no Trainer, no optimizer (41,285 tokens/s on the H200).
Also checked in the ours modes: an example packed after another has the logits it has alone (kernels compiled).

Run on a CUDA machine: make bench-gpu   (python -m bench.gpu [--steps 20] [--shapes 1b 3b] [--modes ...])
One mode: python -m bench.gpu --mode ours_80gb --shape 1b --out F
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.common import ROOT, worker

RESULTS = ROOT / "bench/results.json"
MODES = ["ours_24gb", "ours_80gb", "stage_before", "trl_naive", "ceiling"]
# config.json of meta-llama/Llama-3.2-1B-Instruct and -3B-Instruct (the shapes, not the weights)
SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, head_dim=128),
}
LLAMA_COMMON = dict(vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=131072, rope_theta=500000.0,
                    rms_norm_eps=1e-5, hidden_act="silu",
                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
# Dense bf16 tensor-core peaks (TFLOPS, no sparsity) from the vendors' datasheets; the first name found in the
# device's name wins, so the more specific come first. SLMFORGE_GPU_PEAK_TFLOPS overrides (any other GPU).
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("L4", 121.0)]


# --- arithmetic (tested on CPU) ------------------------------------------------------------------------

def llama_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], **LLAMA_COMMON)


def flops_per_token(config, context: float) -> float:
    """Training FLOPs per token by the usual convention (PaLM, appendix B): 6 x the parameters a token goes through
    (the blocks' linear layers and the LM head; the embedding is a lookup) plus causal attention, 6 x layers x
    attention width x the mean context a token attends to. (LoRA on a frozen base computes no gradient for the
    frozen weights: the hardware does less than this, as every QLoRA MFU figure does.)"""
    from slmforge.gpu import Shape

    s = Shape.of(config)
    dense = s.linear_params() + s.vocab * s.hidden
    return 6.0 * dense + 6.0 * s.layers * s.heads * s.head_dim * context


def peak_tflops(device_name: str) -> float | None:
    override = os.environ.get("SLMFORGE_GPU_PEAK_TFLOPS")
    if override:
        return float(override)
    return next((tflops for name, tflops in PEAK_BF16_TFLOPS if name in device_name), None)


def mfu(tokens_per_s: float, flops: float, device_name: str) -> float | None:
    peak = peak_tflops(device_name)
    return round(tokens_per_s * flops / (peak * 1e12), 4) if peak else None


def summarise(runs: dict[str, dict[str, dict]], device: str, steps: int) -> dict:
    """The gpu.* keys: every run as measured, and the ratios the issue's goals are stated in."""
    out: dict = {"gpu.device": device, "gpu.steps": steps, "gpu.runs": runs,
                 "gpu.measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for shape, modes in runs.items():
        tps = {m: r["tokens_per_s"] for m, r in modes.items() if "tokens_per_s" in r}
        for m in ("ours_24gb", "ours_80gb"):
            if m in tps and "ceiling" in tps:
                out[f"gpu.{shape}.{m}.fraction_of_ceiling"] = round(tps[m] / tps["ceiling"], 3)
            if m in tps and "stage_before" in tps:
                out[f"gpu.{shape}.{m}.speedup_vs_stage_before"] = round(tps[m] / tps["stage_before"], 3)
            if m in tps and "trl_naive" in tps:
                out[f"gpu.{shape}.{m}.speedup_vs_trl_naive"] = round(tps[m] / tps["trl_naive"], 3)
        for m, r in modes.items():
            for key in ("tokens_per_s", "peak_reserved_gb", "mfu", "estimate_gb"):
                if r.get(key) is not None:
                    out[f"gpu.{shape}.{m}.{key}"] = r[key]
    return out


def merge_results(path: Path, keys: dict) -> dict:
    """bench/results.json with every gpu.* key replaced by `keys` and everything else as it was."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results = {k: v for k, v in results.items() if not k.startswith("gpu.")}
    results.update(keys)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


# --- one run (on the GPU) ---------------------------------------------------------------------------

def chat_rows() -> list[dict]:
    """The sample corpus's pairs as chat rows, through the project's own collect and chatml code."""
    from slmforge.chatml import convert
    from slmforge.params import ChatmlParams, SampleSourceParams, build, compose
    from slmforge.sources.sample import collect

    conf = compose(ROOT / "conf", ["sources=[sample]"])
    sample = build(SampleSourceParams, {**conf["sources"]["sample"], "path": str(ROOT / "data/sample")}, "sources.sample")
    records = collect(sample, run_id="bench", quarantine=[], stats={})
    return convert(records, build(ChatmlParams, conf["chatml"], "chatml"))[0]


def make_base(shape: str, folder: Path) -> None:
    """A random model of the shape in bf16 (made on the GPU: seconds, not minutes) and the embedded model's tokenizer
    (its ids are below the shape's vocabulary), saved as the base stage's folder and pin."""
    import torch
    from transformers import AutoModelForCausalLM

    from slmforge.modeling import EMBEDDED, gguf_path
    from slmforge.io import atomic_write_json

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(llama_config(shape), dtype=torch.bfloat16)
    model.save_pretrained(folder / "base")
    del model
    torch.cuda.empty_cache()
    from transformers import AutoTokenizer

    gguf = gguf_path(EMBEDDED["package"], EMBEDDED["gguf_file"])
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder / "base")
    atomic_write_json(folder / "base.json", {"name": f"llama_{shape}_random", "source": "gguf_package"})


def run_mode(mode: str, shape: str, steps: int) -> dict:
    import dataclasses

    import torch
    import yaml
    from trl import SFTConfig, SFTTrainer

    from slmforge.gpu import plan_run, resolve_attention
    from slmforge.modeling import load_base
    from slmforge.params import LoraParams, ModelParams, TrainParams, build
    from slmforge.finetune import add_lora
    from slmforge.training import sft_config, sft_trainer, training_datasets

    warmup = 3
    conf = lambda group, name, cls: build(cls, yaml.safe_load((ROOT / f"conf/{group}/{name}.yaml").read_text()), group)  # noqa: E731
    model_params = dataclasses.replace(conf("model", "llama32_1b", ModelParams), name=f"llama_{shape}_random",
                                       compute_dtype="bfloat16")
    lora = conf("lora", "r16", LoraParams)
    profile = "gpu_24gb" if mode == "ours_24gb" else "gpu_80gb"
    params = dataclasses.replace(conf("train", profile, TrainParams), max_steps=steps + warmup, eval_steps=10**6,
                                 logging_steps=10**6)
    if mode == "stage_before":
        params = dataclasses.replace(params, attention="sdpa", loss_kernel="trl", gradient_checkpointing=False)
    with tempfile.TemporaryDirectory(prefix="slmforge-gpu-") as tmp:
        folder = Path(tmp)
        make_base(shape, folder)
        plan = plan_run(model_params, lora, params, folder / "base", fsdp=False) if mode != "ceiling" else \
            {"attention": "sdpa", "loss_kernel": "model", "memory_estimate_gb": None}
        if mode == "trl_naive":
            plan["attention"] = resolve_attention("sdpa", True)
        torch.cuda.reset_peak_memory_stats()
        model, tokenizer = load_base(model_params, folder / "base", folder / "base.json", for_training=True,
                                     attention=plan["attention"])
        model = add_lora(model, lora)
        if mode == "ceiling":
            return {**ceiling(model, steps, warmup, params.batch_size, params.max_seq_len, tokenizer.vocab_size),
                    "mode": mode, "shape": shape}
        rows = chat_rows()
        if mode == "trl_naive":
            naive = dataclasses.replace(params, packing=False)
            train_ds, _ = training_datasets(rows, rows[:8], tokenizer, naive, model_params.chat_template_kwargs)
            args = SFTConfig(output_dir=str(folder / "out"), per_device_train_batch_size=8, max_length=2048,
                             max_steps=steps + warmup, bf16=True, report_to="none", save_strategy="no",
                             logging_steps=10**6)  # everything else as it comes, gradient checkpointing included
            trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer)
        else:
            train_ds, _ = training_datasets(rows, rows[:8], tokenizer, params, model_params.chat_template_kwargs)
            args = dataclasses.replace(sft_config(params, folder / "out", model_params, plan["loss_kernel"]),
                                       eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
            trainer = sft_trainer(loss_kernel=plan["loss_kernel"], model=model, args=args, train_dataset=train_ds,
                                  processing_class=tokenizer)
        result = timed_training(trainer, warmup)
        if mode.startswith("ours"):
            result["packed_max_abs_diff"] = packed_equals_alone(trainer.model, tokenizer, rows)
        lengths = [len(x) for x in train_ds["input_ids"]]
    context = sum(n * n for n in lengths) / (2 * sum(lengths)) if mode == "trl_naive" else mean_context(train_ds)
    flops = flops_per_token(llama_config(shape), context)
    name = torch.cuda.get_device_name(0)
    return {**result, "mode": mode, "shape": shape, "device": name, "attention": plan["attention"],
            "loss_kernel": plan["loss_kernel"], "estimate_gb": plan["memory_estimate_gb"],
            "mfu": mfu(result["tokens_per_s"], flops, name), "flops_per_token": flops}


def mean_context(train_ds) -> float:
    """The mean number of earlier tokens a token attends to in packed rows: within its own example only."""
    total = weighted = 0
    for lengths in train_ds["seq_lengths"]:
        for n in lengths:
            total += n
            weighted += n * n / 2
    return weighted / max(1, total)


def timed_training(trainer, warmup: int) -> dict:
    """Non-padding tokens/s over the steps after `warmup` (compilation, allocator growth), and the peak memory."""
    import torch
    from transformers import TrainerCallback

    counted = {"tokens": 0, "slots": 0, "start": None, "step": 0}
    step = trainer.training_step

    def counting(model, inputs, *args, **kwargs):
        if counted["start"] is not None:
            mask = inputs.get("attention_mask")
            counted["tokens"] += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            counted["slots"] += inputs["input_ids"].numel()
        return step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                counted["start"] = time.perf_counter()

    trainer.training_step = counting
    trainer.add_callback(Clock())
    trainer.train()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - counted["start"]
    return {"steps": trainer.state.global_step - warmup, "seconds": round(seconds, 2), "tokens": counted["tokens"],
            "tokens_per_s": round(counted["tokens"] / seconds, 1),
            "padding_share": round(1 - counted["tokens"] / max(1, counted["slots"]), 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}


def ceiling(model, steps: int, warmup: int, batch: int, seq: int, vocab: int) -> dict:
    import torch

    model.train()
    x = torch.randint(0, vocab, (batch, seq), device="cuda")
    for i in range(steps + warmup):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = steps * batch * seq
    name = torch.cuda.get_device_name(0)
    flops = flops_per_token(model.config, seq / 2)
    return {"steps": steps, "seconds": round(seconds, 2), "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "padding_share": 0.0, "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
            "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2), "device": name,
            "attention": "sdpa", "mfu": mfu(tokens / seconds, flops, name), "flops_per_token": flops}


def packed_equals_alone(model, tokenizer, rows: list[dict]) -> float:
    """The largest logit difference of an example packed after another against the same example alone, with the
    kernels the run trained with (compiled flex_attention, flash-attention varlen): design.md measured 2e-5."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from slmforge.chat_tokens import tokenize_chat

    a, b = (tokenize_chat(tokenizer, r["messages"], 512)["input_ids"] for r in rows[:2])
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    packed = collate([{"input_ids": a + b, "seq_lengths": [len(a), len(b)]}])
    alone = collate([{"input_ids": b, "seq_lengths": [len(b)]}])
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        p = model(**{k: v.cuda() for k, v in packed.items() if k != "labels"}, use_cache=False).logits[0, len(a):]
        s = model(**{k: v.cuda() for k, v in alone.items() if k != "labels"}, use_cache=False).logits[0]
    return round(float((p.float() - s.float()).abs().max()), 5)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES)
    ap.add_argument("--shape", choices=list(SHAPES))
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench-gpu: no CUDA GPU here: run it on a machine with one (make bench-gpu); `make bench` is the "
                 "CPU benchmark")
    if args.mode:
        Path(args.out).write_text(json.dumps(run_mode(args.mode, args.shape, args.steps), indent=2) + "\n")
        return
    runs: dict[str, dict[str, dict]] = {}
    for shape in args.shapes:
        for mode in args.modes:
            try:
                r = worker("bench.gpu", "--mode", mode, "--shape", shape, "--steps", str(args.steps), timeout=1200)
            except RuntimeError as exc:  # an out-of-memory mode is a result too (the naive runs on small cards)
                r = {"mode": mode, "shape": shape, "error": str(exc).splitlines()[-1][:300]}
            print(f"  gpu {shape} {mode}: " + (f"{r['tokens_per_s']:.0f} tokens/s, peak {r['peak_reserved_gb']} GB, "
                                              f"MFU {r.get('mfu')}" if "tokens_per_s" in r else r["error"]), flush=True)
            runs.setdefault(shape, {})[mode] = r
    keys = summarise(runs, torch.cuda.get_device_name(0), args.steps)
    merge_results(RESULTS, keys)
    print(json.dumps({k: v for k, v in keys.items() if k != "gpu.runs"}, indent=1))


if __name__ == "__main__":
    main()
