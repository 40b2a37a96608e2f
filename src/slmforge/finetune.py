"""The fine-tuning kit both trainings use (the chat adapter in training.py, the student scorer in student.py):
LoRA on the base, the Trainer arguments they share, dvclive logging, the history summary (best and last step)
and the cleanup of checkpoints once the folder is saved (adapter_folder.save_folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from slmforge.params import LoraParams, ModelParams, OptimParams

# What dvclive logs at every logged step, and under which name.
LOGGED = {"loss", "eval_loss", "learning_rate", "grad_norm", "eval_mean_token_accuracy", "mean_token_accuracy"}


def add_lora(model, lora: LoraParams, task_type: str = "CAUSAL_LM"):
    """The model with LoRA adapters on `lora.target_modules` (SEQ_CLS also saves the regression head)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
        task_type=task_type, bias="none",
    ))


def trainer_arguments(params: OptimParams, output_dir: Path, model_params: ModelParams, *, scheduler: str,
                      save_total_limit: int) -> dict:
    """The TrainingArguments both trainings share: steps, batches, optimiser, evaluation and saving every
    eval_steps with the best checkpoint restored at the end, seeds, precision and device."""
    import torch

    from slmforge.modeling import compute_dtype

    return dict(
        output_dir=str(output_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=max(params.batch_size, 8),  # no gradients: bigger batches are cheap
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.lr,
        lr_scheduler_type=scheduler,
        warmup_steps=params.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        eval_strategy="steps",
        eval_steps=params.eval_steps,
        save_strategy="steps",
        save_steps=params.eval_steps,
        save_total_limit=save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=params.logging_steps,
        seed=params.seed,
        data_seed=params.seed,
        bf16=compute_dtype(model_params.compute_dtype) == torch.bfloat16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        dataloader_num_workers=0,
    )


def dvclive_callback(live):
    from transformers import TrainerCallback

    class DvcLiveLogger(TrainerCallback):
        """Log losses and learning rate by global step. (transformers' own DVCLiveCallback also logs every
        TrainingArguments field as params, machine paths included; we keep metrics to numbers.)"""

        def on_log(self, args, state, control, logs=None, **kwargs):
            live.step = state.global_step  # before logging: a value belongs to the step it was measured at
            for key, value in (logs or {}).items():
                if key in LOGGED and isinstance(value, (int, float)):
                    name = {"loss": "train/loss", "eval_loss": "eval/loss"}.get(key, key.replace("eval_", "eval/"))
                    live.log_metric(name, float(value), timestamp=False)
            live.make_summary()

    return DvcLiveLogger()


def last_step_evaluation():
    from transformers import TrainerCallback

    class EvaluateLastStep(TrainerCallback):
        """Evaluate (and save) at the last step too, whatever eval_steps says: the Trainer restores the best
        checkpoint at the end, so only an evaluation logged before that restore tells how the run ended."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_evaluate = control.should_save = True
            return control

    return EvaluateLastStep()


def open_live(metrics_dir: Path, resume: bool = False):
    """dvclive writing metrics_dir/metrics.json and the loss curves (no dvc.yaml of its own, no experiment)."""
    from dvclive import Live

    metrics_dir.mkdir(parents=True, exist_ok=True)
    return Live(dir=str(metrics_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)


def close_live(live, summary: dict, keys: tuple[str, ...]) -> None:
    """Write `keys` of the summary into dvclive's metrics.json and close it."""
    for key in keys:
        live.summary[key] = summary[key]
    live.make_summary()
    live.end()


def history_summary(history: list[dict], final_eval_loss: float, global_step: int) -> dict:
    """From the Trainer's log history: the best evaluation (lowest eval_loss, the first on a tie) and the last,
    and the running training loss of the last three logged steps. Without any evaluation logged, the best is
    (None, final_eval_loss) and the last (global_step, final_eval_loss)."""
    train_losses = [h["loss"] for h in history if "loss" in h]
    points = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    best_step, best_eval = min(points, key=lambda x: x[1]) if points else (None, final_eval_loss)
    last_step, last_eval = points[-1] if points else (global_step, final_eval_loss)
    recent = sum(train_losses[-3:]) / len(train_losses[-3:]) if train_losses else float("nan")
    return {"best_step": best_step, "best_eval_loss": best_eval, "last_eval_step": last_step,
            "last_eval_loss": last_eval, "train_loss": recent}


def remove_checkpoints(folder: Path) -> None:
    """The run's checkpoints, once the folder is saved: they were only there for resuming."""
    shutil.rmtree(folder, ignore_errors=True)
