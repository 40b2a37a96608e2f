"""`slmforge publish` against a Hub on 127.0.0.1 (HF_ENDPOINT): the files that arrive, the model card made from the
run, the private flag, --dry-run, and a token that is sent in the Authorization header and written nowhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hub_server import Hub
from tests.test_cli import make_adapter


@pytest.fixture(scope="module")
def run_dir(base_model, model_params, tmp_path_factory) -> Path:
    """What a finished run leaves that publish reads: params.yaml with its domains, the pin, a stats adapter,
    dvc.lock, metrics/split.json, metrics/eval/stats.json and metrics/runs/cost.json."""
    root = Path(__file__).resolve().parents[1]
    run = tmp_path_factory.mktemp("run")
    shutil.copy(root / "params.yaml", run / "params.yaml")
    params = yaml.safe_load((run / "params.yaml").read_text())
    params["domains"] = {"stats": {"origins": ["stackexchange"], "sources": [], "tags": [], "fields": {}},
                         "tweets": {"origins": ["tweets"], "sources": [], "tags": [], "fields": {}}}
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    (run / "models").mkdir()
    shutil.copy(base_model[1], run / "models/base.json")
    adapter = make_adapter(base_model[0], run / "models/adapters/stats", model_params, random_b=True, seed=7)
    card = json.loads((adapter / "slmforge_adapter.json").read_text())
    card.update(lora={"r": 4, "alpha": 4, "dropout": 0.0, "target_modules": "all-linear"},
                train={"profile": "tiny", "epochs": 1, "lr": 2e-4, "scheduler": "cosine", "batch_size": 1,
                       "grad_accum": 1, "max_seq_len": 128, "seed": 42},
                data_sha256={"data/split/train.jsonl": "ab" * 32}, metrics={"eval_loss": 2.5, "train_seconds": 12.0})
    (adapter / "slmforge_adapter.json").write_text(json.dumps(card))
    (run / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "split": {"outs": [{"path": "data/split", "md5": "5" * 32 + ".dir"}]},
        "train@stats": {"outs": [{"path": "models/adapters/stats", "md5": "7" * 32 + ".dir"}]}}}))
    (run / "metrics/eval").mkdir(parents=True)
    (run / "metrics/split.json").write_text(json.dumps({"test_fingerprint": "f" * 64, "counts": {"test": 31}}))
    metric = {"n": 20, "mean_base": 0.1, "mean_tuned": 0.2, "mean_delta": 0.1, "delta_ci_low": 0.05,
              "delta_ci_high": 0.15, "wilcoxon_p": 0.001}
    (run / "metrics/eval/stats.json").write_text(json.dumps({
        "verdict": "DEPLOY", "reasons": ["Wilcoxon p = 0.001 < 0.05"], "metric": "rouge_l",
        "stats": {"n": 20, "relative_improvement": 1.0, "wilcoxon_p": 0.001}, "per_metric": {"rouge_l": metric},
        "base": {"probe_accuracy": 0.0, "perplexity": 60.0}, "tuned": {"probe_accuracy": 0.25, "perplexity": 40.0,
                                                                      "probes": 48},
        "oracle": {"backend": "claude"}}))
    (run / "metrics/runs").mkdir()  # what the run paid: the cost stage's sum of the stages' run facts
    (run / "metrics/runs/cost.json").write_text(json.dumps({"total": {"usd": 0.5, "calls": 10}}))
    return run


def publish(run: Path, *args: str, token: str | None, endpoint: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_OFFLINE="0", HF_HOME=str(run / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "slmforge.cli", "publish", *args], cwd=run, env=env,
                          capture_output=True, text=True, timeout=300)


def test_publish_uploads_the_adapter_with_a_card_from_the_run(run_dir):
    with Hub() as hub:
        proc = publish(run_dir, "team/stats-adapter", "--domain", "stats", "--private", token=hub.token,
                       endpoint=hub.url)
        assert proc.returncode == 0, proc.stderr
        repo = hub.repos["team/stats-adapter"]
        local = sorted(p.name for p in (run_dir / "models/adapters/stats").iterdir() if p.name != "README.md")
        assert sorted(repo["files"]) == sorted([*local, "README.md"]) and repo["private"] and hub.cards_validated == 1
        for name in local:
            assert repo["files"][name] == (run_dir / "models/adapters/stats" / name).read_bytes(), name
        card = repo["files"]["README.md"].decode()
        assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "library_name: peft" in card
        pin = json.loads((run_dir / "models/base.json").read_text())
        assert pin["gguf_sha256"][:16] in card and pin["package_version"] in card
        assert "f" * 64 in card and "5" * 32 + ".dir" in card and "7" * 32 + ".dir" in card  # lineage
        assert "Verdict: **DEPLOY**" in card and "| rouge_l | 20 |" in card and "base 0.000, tuned 0.250" in card
        assert "r=4" in card and "$0.5000" in card and "Training 12 s" in card
        # the token went to the Hub in the Authorization header and nowhere else
        assert all(r["headers"].get("authorization") == f"Bearer {hub.token}" for r in hub.requests)
        assert hub.token not in proc.stdout + proc.stderr
        assert not any(hub.token.encode() in data for data in repo["files"].values())
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert hub.token.encode() not in path.read_bytes(), path


def test_dry_run_uploads_nothing_and_needs_no_token(run_dir):
    with Hub() as hub:
        proc = publish(run_dir, "team/dry", "--domain", "stats", "--dry-run", token=None, endpoint=hub.url)
        assert proc.returncode == 0, proc.stderr
        assert hub.requests == [] and "would upload to team/dry (public)" in proc.stdout
        assert "adapter_model.safetensors" in proc.stdout and "# team/dry" in proc.stdout


def test_no_token_no_domain_and_no_adapter_are_one_line_each(run_dir):
    with Hub() as hub:
        cases = [(("team/x", "--domain", "stats"), None, "HF_TOKEN is not set"),
                 (("team/x",), hub.token, "--domain: pick one of stats, tweets"),
                 (("team/x", "--domain", "tweets"), hub.token, "run `dvc repro train@tweets` first")]
        for args, token, message in cases:
            proc = publish(run_dir, *args, token=token, endpoint=hub.url)
            errors = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr
        assert hub.requests == []
