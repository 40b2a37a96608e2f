"""The train stage on two CPU processes through the real `accelerate launch` (DDP over gloo), on the tiny profile.

dvc.yaml's command stays `python -m stages.train ...`; with train.distributed=ddp_cpu the stage relaunches itself
under accelerate, both ranks train (world size 2 in the metrics, one record per rank), only rank 0 writes, and the
adapter loads with plain peft. The 4-bit NF4 base is kept: bitsandbytes' CPU backend trains under DDP/gloo here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.distributed import launch_command, relaunch
from slmforge.errors import UserError

BIN = Path(sys.executable).parent
STAGE_ARGS = ["--domain", "all", "--train", "data/split/train.jsonl", "--val", "data/split/val.jsonl",
              "--base", "models/base", "--pin", "models/base.json", "--adapter", "models/adapter", "--metrics-dir",
              "metrics/train", "--checkpoints", "checkpoints/train", "--run-facts", "metrics/runs/train.json"]


def fact_rows(root: Path, phrasings: range, n_facts: int) -> list[dict]:
    """Chat rows from the embedded fact table: real questions and answers of the sample domain."""
    facts = [json.loads(line) for line in (root / "data/sample/facts.jsonl").read_text().splitlines()][:n_facts]
    return [{"id": f"{f['fact_id']}:{i}", "source": "sample", "meta": {"origin": "facts"}, "provenance": {},
             "messages": [{"role": "system", "content": "You answer questions about Quillmark's Lumen platform."},
                          {"role": "user", "content": f["phrasings"][i]},
                          {"role": "assistant", "content": f["response"]}]}
            for f in facts for i in phrasings]


@pytest.fixture(scope="module")
def project(tmp_path_factory, root, base_model) -> Path:
    """A project folder as the train stage sees it: conf/ (tiny profile, ddp_cpu), params.yaml, stages/, the base
    model and a split of fact rows."""
    from slmforge.io import atomic_write_jsonl
    from slmforge.params import compose_to_file

    top = tmp_path_factory.mktemp("ddp") / "project"
    shutil.copytree(root / "conf", top / "conf")
    shutil.copytree(root / "stages", top / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    config = top / "conf/config.yaml"
    config.write_text(config.read_text().replace("train: cpu", "train: tiny"))
    tiny = top / "conf/train/tiny.yaml"
    tiny.write_text(tiny.read_text().replace("distributed: null", "distributed: ddp_cpu"))
    compose_to_file(top / "conf", top / "params.yaml")
    shutil.copytree(base_model[0], top / "models/base")
    shutil.copy(base_model[1], top / "models/base.json")
    atomic_write_jsonl(top / "data/split/train.jsonl", fact_rows(root, range(0, 3), 8))
    atomic_write_jsonl(top / "data/split/val.jsonl", fact_rows(root, range(3, 4), 8))
    return top


def run_stage(project: Path, *args: str) -> subprocess.CompletedProcess:
    # As DVC runs it: a plain process, no launcher in its environment.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DVC_", "ACCELERATE_")) and k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=900)


def test_two_cpu_processes_train_one_adapter(project):
    proc = run_stage(project, *STAGE_ARGS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "relaunching through `accelerate launch --config_file conf/accelerate/ddp_cpu.yaml`" in proc.stdout
    assert proc.stdout.count("train@all: ") == 1, proc.stdout  # only rank 0 reports (and writes)
    assert "2 process(es)" in proc.stdout

    metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["last_step"] == 4, metrics
    card = json.loads((project / "models/adapter/slmforge_adapter.json").read_text())["metrics"]
    # which process ran where is a fact of this run, not of the adapter: in the run facts, not in the card
    assert "ranks" not in card and "train_seconds" not in card
    ranks = json.loads((project / "metrics/runs/train.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and len({r["pid"] for r in ranks}) == 2, ranks
    assert all(r["steps"] == 4 and r["device"].startswith("cpu") for r in ranks), ranks
    assert card["distributed"] == "ddp_cpu" and card["load_in_4bit"] is True, card
    assert not list((project / "checkpoints/train").glob("*/*/checkpoint-*"))  # cleaned after the adapter was saved

    # the loss fell: training loss per step (averaged over both ranks) and validation loss across evaluations
    def column(rel: str) -> list[float]:  # by step (the final evaluation logs the last step again)
        lines = (project / "metrics/train/plots/metrics" / rel).read_text().splitlines()[1:]
        return list({int(line.split("\t")[0]): float(line.split("\t")[-1]) for line in lines}.values())

    train_loss, eval_loss = column("train/loss.tsv"), column("eval/loss.tsv")
    assert len(train_loss) == 4 and len(eval_loss) == 2, (train_loss, eval_loss)
    assert sum(train_loss[-2:]) < sum(train_loss[:2]) and eval_loss[-1] < eval_loss[0], (train_loss, eval_loss)

    # the adapter is a plain PEFT adapter
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(project / "models/base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(project / "models/adapter"))
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # lora_B starts at zero: it moved


def test_a_rank_that_fails_fails_the_stage_with_its_one_line(project):
    proc = run_stage(project, *[a.replace("data/split", "data/missing") for a in STAGE_ARGS])
    assert proc.returncode != 0
    assert "error: data/missing/train.jsonl: file not found" in proc.stderr, proc.stderr[-2000:]


def test_unknown_config_is_one_line_naming_the_known_ones(root, monkeypatch):
    for name in ("LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError) as err:
        relaunch("deepspeed", "stages.train", [], root / "conf/accelerate")
    assert "conf/accelerate/deepspeed.yaml" in str(err.value)
    assert "known: ddp, ddp_cpu, fsdp_qlora" in str(err.value) and "\n" not in str(err.value)


def test_no_relaunch_without_a_config_or_inside_a_launched_process(root, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert relaunch(None, "stages.train", []) is None
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank the launcher started: it trains, it never launches again
    assert relaunch("ddp_cpu", "stages.train", [], root / "conf/accelerate") is None
    cmd = launch_command(root / "conf/accelerate/ddp.yaml", "stages.train", ["--x", "1"])
    assert cmd[-6:] == ["--config_file", str(root / "conf/accelerate/ddp.yaml"), "-m", "stages.train", "--x", "1"]


def test_fsdp_loading_stores_the_4bit_weights_in_the_compute_dtype_with_the_same_math(root, base_model, model_params,
                                                                                       monkeypatch):
    """What fsdp_qlora changes in loading, checked on CPU (FSDP itself needs a GPU: accelerate's FSDP plugin refuses
    to start without a CUDA/XPU/... device): the NF4 weights are packed into bf16 (bnb_4bit_quant_storage), which
    FSDP can shard where it cannot shard uint8, the model has no device map for FSDP to fight with, and the packed
    weights give the same loss, to the bit, as the default uint8 packing, with LoRA gradients flowing."""
    import bitsandbytes as bnb
    import torch

    from slmforge.modeling import load_base
    from slmforge.params import LoraParams, build, compose
    from slmforge.finetune import add_lora

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    models = {}
    for fsdp in (True, False):
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true" if fsdp else "false")
        models[fsdp], tokenizer = load_base(model_params, *base_model, for_training=True)
    four_bit = {fsdp: [m.weight for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
                for fsdp, model in models.items()}
    assert four_bit[True] and len(four_bit[True]) == len(four_bit[False])
    assert {w.dtype for w in four_bit[True]} == {torch.bfloat16}  # the storage FSDP shards
    assert {w.dtype for w in four_bit[False]} == {torch.uint8}  # bitsandbytes' default packing
    assert not getattr(models[True], "hf_device_map", None)  # FSDP places the shards itself
    # the same packed bits, seen through another dtype
    assert all(a.view(torch.uint8).flatten().equal(b.flatten()) for a, b in zip(four_bit[True], four_bit[False]))

    ids = tokenizer("You answer questions about Quillmark's Lumen platform.", return_tensors="pt").input_ids
    with torch.no_grad():
        losses = {fsdp: model(input_ids=ids, labels=ids).loss.item() for fsdp, model in models.items()}
    assert losses[True] == losses[False], losses
    peft_model = add_lora(models[True], build(LoraParams, compose(root / "conf")["lora"], "lora"))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
