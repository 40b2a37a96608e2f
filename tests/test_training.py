"""Assistant-only labels, packing without cross-contamination, and QLoRA that survives an eval pass."""

import pytest
import torch

from slmforge.chat_tokens import epoch_rounds, pack_rounds, tokenize_chat
from slmforge.training import training_datasets
from tests.conftest import chat_row


def test_labels_cover_exactly_the_assistant_turn(tokenizer):
    row = chat_row("a", "What is SRM?", "Sample ratio mismatch.")
    ex = tokenize_chat(tokenizer, row["messages"], 512)
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]
    assert tokenizer.decode(learned).startswith("Sample ratio mismatch.<|im_end|>")
    prompt = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label == -100]
    assert "What is SRM?" in tokenizer.decode(prompt)
    assert tokenizer.decode(ex["input_ids"]).endswith(tokenizer.decode(learned))


def test_multi_turn_learns_every_assistant_turn_only(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Alpha?"}, {"role": "assistant", "content": "0.05 usually."}]
    ex = tokenize_chat(tokenizer, messages, 512)
    learned = tokenizer.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100])
    assert "Hello." in learned and "0.05 usually." in learned and "Alpha?" not in learned


def test_repeated_examples_never_share_a_packed_row(tokenizer):
    rows = [chat_row(f"f{i}", f"Lumen fact {i}?", f"Value {i}.", origin="facts") for i in range(6)]
    rows += [chat_row(f"s{i}", f"Question {i}?", f"Answer {i}.") for i in range(6)]
    packed = pack_rounds(rows, tokenizer, 256, {"facts": 3.0}, seed=0)
    total = 0
    for row in packed:
        ids, lengths = row["input_ids"], row["seq_lengths"]
        pieces, start = [], 0
        for n in lengths:
            pieces.append(tuple(ids[start:start + n]))
            start += n
        assert len(pieces) == len(set(pieces)), "a packed row holds two copies of one example"
        total += len(pieces)
    assert total == 6 * 3 + 6


def test_packed_example_has_the_same_loss_as_alone(base_model):
    """Examples packed into one row by position_ids stay apart (SDPA, use_cache=False, as TRL trains)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = AutoTokenizer.from_pretrained(str(base_model[0]))
    model = AutoModelForCausalLM.from_pretrained(str(base_model[0]), dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    a = tokenize_chat(tok, chat_row("a", "Tell me about CUPED and why it works so well.",
                                    "It regresses out pre-period variance.")["messages"], 256)
    b = tokenize_chat(tok, chat_row("b", "What is a p-value?", "The chance of data this extreme under H0.")
                      ["messages"], 256)
    collator = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    packed = collator([{"input_ids": a["input_ids"] + b["input_ids"], "labels": a["labels"] + b["labels"],
                        "seq_lengths": [len(a["input_ids"]), len(b["input_ids"])]}])
    alone = collator([{"input_ids": b["input_ids"], "labels": b["labels"], "seq_lengths": [len(b["input_ids"])]}])
    with torch.no_grad():
        logits_packed = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"],
                              use_cache=False).logits[0, len(a["input_ids"]):]
        logits_alone = model(input_ids=alone["input_ids"], position_ids=alone["position_ids"],
                             use_cache=False).logits[0]
    assert torch.allclose(logits_packed, logits_alone, atol=1e-4), (logits_packed - logits_alone).abs().max()
    labels = torch.tensor(b["labels"])
    loss = lambda lg: torch.nn.functional.cross_entropy(lg[:-1], labels[1:], ignore_index=-100)  # noqa: E731
    assert loss(logits_packed).item() == pytest.approx(loss(logits_alone).item(), abs=1e-4)
    # and the packed row really is one row: without position_ids, B would attend to A and differ
    with torch.no_grad():
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits[0, len(a["input_ids"]):]
    assert not torch.allclose(leaky, logits_alone, atol=1e-2)


def _train_losses(base_model, model_params, eval_first: bool, steps: int = 4) -> list[float]:
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed

    from slmforge.modeling import load_base

    set_seed(0)
    model, tok = load_base(model_params, *base_model, for_training=True)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    ex = tokenize_chat(tok, chat_row("a", "What is Lumen's default alpha?", "Lumen uses 0.025.")["messages"], 128)
    ids, labels = torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]])
    if eval_first:  # what the Trainer's evaluation loop does before training resumes
        model.eval()
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_qlora_after_an_eval_pass_trains_like_without_one(base_model, model_params):
    """bitsandbytes' CPU repacking trap (design.md): with it disabled, an eval pass changes nothing."""
    clean = _train_losses(base_model, model_params, eval_first=False)
    after_eval = _train_losses(base_model, model_params, eval_first=True)
    assert clean[-1] < clean[0] * 0.8, clean  # it learns
    assert after_eval == pytest.approx(clean, abs=1e-3), (clean, after_eval)


def test_origin_weights_give_passes_and_seeded_fractions():
    rows = [chat_row(f"f{i}", f"q{i}", "a", origin="facts") for i in range(4)]
    rows += [chat_row(f"s{i}", f"q{i}", "a") for i in range(10)]
    rounds = epoch_rounds(rows, {"facts": 2.5, "stackexchange": 0.3}, seed=1)
    count = lambda prefix: sum(r["id"].startswith(prefix) for chosen in rounds for r in chosen)  # noqa: E731
    assert count("f") == 2 * 4 + 2 and count("s") == 3
    assert all(len({r["id"] for r in chosen}) == len(chosen) for chosen in rounds)  # no copy within a round
    assert rounds == epoch_rounds(rows, {"facts": 2.5, "stackexchange": 0.3}, seed=1)
    assert epoch_rounds(rows, {}, seed=1)[0] and len(epoch_rounds(rows, {}, seed=1)) == 1


def test_the_stage_trainer_computes_trl_fused_heads_loss_gradients_and_accuracy(base_model, model_params, tmp_path):
    """Off Triton the train stage takes the model's own loss instead of TRL's fused LM head (bench/train.py:
    1.2x faster here); on the same packed batch both must give the same loss, gradients and token accuracy."""
    import dataclasses

    from trl import SFTTrainer

    from slmforge.modeling import load_base
    from slmforge.params import LoraParams, TrainParams, build, compose
    from slmforge.chat_tokens import pack_rounds
    from slmforge.finetune import add_lora
    from slmforge.training import sft_config, sft_trainer
    from tests.conftest import ROOT

    conf = compose(ROOT / "conf", ["train=tiny"])
    params = dataclasses.replace(build(TrainParams, conf["train"], "train"), max_steps=1)
    lora = dataclasses.replace(build(LoraParams, conf["lora"], "lora"), dropout=0.0)  # deterministic forward
    model, tok = load_base(model_params, *base_model, for_training=True)
    model = add_lora(model, lora)
    rows = [chat_row(f"r{i}", f"What does metric {i} measure in an A/B test?", f"Metric {i} measures lift {i}.")
            for i in range(4)]
    ds = pack_rounds(rows, tok, 128, {}, seed=0)
    assert len(ds[0]["seq_lengths"]) > 1, "the batch should hold several packed examples"
    seen = {}
    for name, make in (("stage", sft_trainer), ("trl", SFTTrainer)):
        trainer = make(model=model, args=sft_config(params, tmp_path / name, model_params), train_dataset=ds,
                       eval_dataset=ds, processing_class=tok)
        batch = trainer.data_collator([ds[0]])
        model.train()
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        seen[name] = (loss.item(), grads, trainer._metrics["train"]["mean_token_accuracy"][-1])
    (loss_a, grad_a, acc_a), (loss_b, grad_b, acc_b) = seen["stage"], seen["trl"]
    assert loss_a == pytest.approx(loss_b, rel=2e-3), (loss_a, loss_b)
    assert torch.nn.functional.cosine_similarity(grad_a, grad_b, dim=0) > 0.999
    assert (grad_a.norm() / grad_b.norm()).item() == pytest.approx(1.0, rel=1e-2)
    assert acc_a == pytest.approx(acc_b, abs=1e-6)


def test_every_train_and_val_row_is_accounted_for(tokenizer):
    """rows in = rows used + rows dropped, by reason: a capped row, one no epoch picks (its origin weighs 0), one
    whose answer max_seq_len cuts away; a row cut short but with answer tokens left is used and counted as such."""
    import dataclasses

    from slmforge.params import TrainParams, build, compose
    from tests.conftest import ROOT

    long_question = "Explain the design of this experiment in detail. " * 40  # far beyond 64 tokens
    train = [chat_row("kept", "What is SRM?", "Sample ratio mismatch."),
             chat_row("cut-away", long_question, "An answer the cut leaves nothing of."),
             chat_row("cut-short", "What is MDE?", "The minimum detectable effect, " + "and more words " * 30),
             chat_row("unweighted", "What is CUPED?", "Variance reduction.", origin="noise"),
             chat_row("capped", "Past the cap?", "Yes.")]
    val = [chat_row("v-kept", "What is alpha?", "0.05."), chat_row("v-cut-away", long_question, "Gone.")]
    params = dataclasses.replace(build(TrainParams, compose(ROOT / "conf")["train"], "train"), max_seq_len=64,
                                 max_train_examples=4, origin_weights={"noise": 0.0}, packing=True)
    accounting: dict = {}
    train_ds, val_ds = training_datasets(train, val, tokenizer, params, accounting=accounting)
    assert accounting["train"] == {"rows_in": 5, "rows_used": 2, "truncated": 1, "accounting_ok": True, "dropped": {
        "answer_truncated_away": 1, "max_train_examples": 1, "origin_weight": 1}}
    assert accounting["val"] == {"rows_in": 2, "rows_used": 1, "truncated": 0, "accounting_ok": True,
                                 "dropped": {"answer_truncated_away": 1}}
    assert len(val_ds) == 1 and sum(len(x["seq_lengths"]) for x in train_ds) == 2


def test_the_same_adapter_config_is_the_same_bytes_whatever_the_hash_seed(tmp_path):
    """PEFT writes target_modules in its set's order, which follows the process's string hash seed; sorted, two
    processes write the same file (the raw files of these two seeds differ: the test can tell)."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import shutil, sys; from peft import LoraConfig; from slmforge.adapter_folder import canonical_adapter_config; "
            "LoraConfig(r=8, target_modules=['q_proj','k_proj','v_proj','o_proj','gate_proj','up_proj','down_proj'])"
            ".save_pretrained(sys.argv[1] + '/raw'); shutil.copytree(sys.argv[1] + '/raw', sys.argv[1] + '/sort'); "
            "canonical_adapter_config(sys.argv[1] + '/sort')")
    written = {}
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True)
        for mode in ("raw", "sort"):
            written[seed, mode] = (tmp_path / seed / mode / "adapter_config.json").read_bytes()
    assert written["1", "raw"] != written["2", "raw"]
    assert written["1", "sort"] == written["2", "sort"]


def test_rows_seen_once_leave_out_repeated_and_unseen_rows():
    """The gap's training side: rows an epoch shows exactly once, never the facts origin_weights repeat."""
    import dataclasses

    from slmforge.params import TrainParams, build, compose
    from slmforge.training import rows_seen_once
    from tests.conftest import ROOT

    params = dataclasses.replace(build(TrainParams, compose(ROOT / "conf")["train"], "train"),
                                 origin_weights={"facts": 6, "stackexchange": 0.4}, max_train_examples=0)
    rows = [chat_row(f"f{i}", f"q{i}", "a", origin="facts") for i in range(10)]
    rows += [chat_row(f"s{i}", f"q{i}", "a") for i in range(10)]
    rows += [chat_row(f"t{i}", f"q{i}", "a", origin="tweets") for i in range(5)]
    once = rows_seen_once(rows, params, 100)
    ids = {r["id"] for r in once}
    shown = {r["id"] for chosen in epoch_rounds(rows, params.origin_weights, params.seed) for r in chosen}
    assert not any(i.startswith("f") for i in ids)  # facts are shown six times
    assert {f"t{i}" for i in range(5)} <= ids and ids <= shown  # tweets once; no stackexchange row never shown
    assert sum(i.startswith("s") for i in ids) == 4  # the 40% of stackexchange an epoch shows
    assert [r["id"] for r in rows_seen_once(rows, params, 3)] == [r["id"] for r in once[:3]]  # seeded, capped


@pytest.mark.timeout(1800)  # a guard against a hang (21 min here with 2 cores shared by a load of 11)
def test_early_stopping_stops_when_validation_loss_rises_and_the_last_step_is_recorded(base_model, model_params,
                                                                                     tmp_path):
    """Training on answers unlike the validation answers: validation loss rises after the first steps, early
    stopping ends the run before max_steps, the last step's evaluation (made before the best checkpoint is
    restored) is recorded above the best one, and the saved adapter is the best one."""
    import dataclasses
    import json

    from slmforge.io import atomic_write_jsonl
    from slmforge.params import LoraParams, TrainParams, build, compose
    from slmforge.training import train
    from tests.conftest import ROOT

    conf = compose(ROOT / "conf", ["train=tiny"])
    params = dataclasses.replace(build(TrainParams, conf["train"], "train"), max_steps=16, eval_steps=1,
                                 early_stopping_patience=2, lr=2e-3, max_seq_len=64, max_train_examples=0,
                                 origin_weights={}, packing=False, logging_steps=1)
    lora = build(LoraParams, conf["lora"], "lora")
    noise = "zq vx zq vx zq vx zq vx zq vx"
    train_rows = [chat_row(f"t{i}", f"What sample size does experiment {i} need?", noise) for i in range(8)]
    val_rows = [chat_row(f"v{i}", f"What sample size does experiment {i + 50} need?",
                         f"About {1200 + i} users per arm for a two-point lift.") for i in range(3)]
    files = [tmp_path / "train.jsonl", tmp_path / "val.jsonl"]
    atomic_write_jsonl(files[0], train_rows)
    atomic_write_jsonl(files[1], val_rows)
    summary = train(train_rows=train_rows, val_rows=val_rows, data_files=files, model_params=model_params, lora=lora,
                    params=params, base_dir=base_model[0], base_json=base_model[1], adapter_dir=tmp_path / "adapter",
                    metrics_dir=tmp_path / "metrics", checkpoint_root=tmp_path / "ckpt")
    assert summary["stopped_early"] and summary["last_step"] < params.max_steps, summary
    assert summary["last_eval_step"] == summary["last_step"] > summary["best_step"]
    assert summary["last_eval_loss"] > summary["best_eval_loss"] and summary["last_minus_best_eval_loss"] > 0
    assert summary["eval_loss"] == pytest.approx(summary["best_eval_loss"], abs=1e-4)  # the best was restored
    # the gap: the saved adapter's loss on training rows shown once against its validation loss
    assert summary["train_once_rows"] == len(val_rows)
    assert summary["train_eval_gap"] == pytest.approx(summary["eval_loss"] - summary["train_once_loss"])
    assert summary["overfit_flag"] == (summary["train_eval_gap"] > params.gap_threshold)
    card = json.loads((tmp_path / "adapter/slmforge_adapter.json").read_text())["metrics"]
    assert card["last_eval_loss"] == summary["last_eval_loss"]
