"""The whole DAG as a user runs it, in a fresh copy of the repo, on the tiny train and eval profiles.

One module-scoped project; the tests run in file order and build on each other like a user session:
repro (collect to evaluate, with the local oracle calibrating, labelling and synthesizing), no-op repro, a
forced re-run of the oracle stages that makes zero calls, the adapter in a fresh process, a param change that
re-runs exactly train and evaluate (killed mid-train and resumed), push and pull into a fresh clone whose
empty answer store is refilled from DVC's cache, an experiment queue with one worker and then two at once
(same results, an intact cache), and an S3 remote on 127.0.0.1 (moto) from which a teammate's `dvc repro --pull`
restores every stage through the run-cache without running one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOMAINS = ["stats", "tweets"]  # conf/domains/stats_tweets.yaml: one adapter each, from one split
DOMAIN_STAGES = [f"{stage}@{d}" for stage in ("train", "evaluate") for d in DOMAINS]


def sh(cmd: str, cwd: Path, check: bool = True, timeout: int = 900, store: Path | None = None,
       extra_env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    # The oracle's answer store lives beside the repo (never in the user's ~/.cache during tests).
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               SLMFORGE_CACHE=str(store or cwd.parent / "store"), **(extra_env or {}))
    if log is None:
        proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    else:  # output to a file: a daemon the command leaves behind (a queue worker) keeps no pipe of ours open
        with open(log, "w") as out:
            proc = subprocess.run(cmd, shell=True, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout)
        proc.stdout, proc.stderr = log.read_text(), ""
    if check and proc.returncode != 0:
        raise AssertionError(f"`{cmd}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_facts(repo: Path, stage: str) -> dict:
    """What a stage's last run did (calls, cache hits, seconds): metrics/runs/, beside its outputs, not in them."""
    return json.loads((repo / f"metrics/runs/{stage}.json").read_text())


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def set_conf(repo: Path, rel: str, key: str, value: str) -> None:
    path = repo / "conf" / rel
    lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def copy_project(top: Path, config_edits: dict[str, str]) -> Path:
    """The repo's tracked files (no lock, metrics or reports: as a fresh clone before its first run) in
    top/repo, conf/config.yaml edited by plain replacements, committed with params.yaml composed."""
    repo = top / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if rel == "dvc.lock" or rel.startswith(("metrics/", "reports/")):
            continue
        if (ROOT / rel).exists():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    config = repo / "conf" / "config.yaml"
    text = config.read_text()
    for old, new in config_edits.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    sh("git init -q && git config user.email t@t && git config user.name t", repo)
    sh("python -m slmforge.cli compose && git add -A && git commit -qm init", repo)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("e2e"), {"train: cpu": "train: tiny", "eval: default": "eval: tiny",
                                                         "scorer: default": "scorer: tiny",
                                                         "sources: [sample]": "sources: [sample, files]",
                                                         "domains: all": "domains: stats_tweets"})


def test_repro_runs_the_whole_dag(repo):
    out = sh("dvc repro", repo, timeout=1800).stdout  # every stage, the local oracle labelling ~560 rows: minutes
    stages = ran(out)
    order = ["check_params", "collect@files", "collect@sample", "base", "oracle_model", "clean", "synthesize", "chatml",
             "calibrate", "label", "split", *DOMAIN_STAGES, "domains", "cost", "train_scorer", "evaluate_scorer"]
    assert sorted(stages) == sorted(order), stages
    for before, after in [("clean", "synthesize"), ("oracle_model", "synthesize"), ("synthesize", "chatml"),
                          ("chatml", "calibrate"), ("calibrate", "label"), ("label", "split"), ("split", "train@stats"),
                          ("split", "train@tweets"), ("train@stats", "evaluate@stats"),
                          ("train@tweets", "evaluate@tweets"), ("evaluate@stats", "domains"),
                          ("evaluate@tweets", "domains"), ("evaluate@stats", "cost"), ("evaluate@tweets", "cost"), ("split", "train_scorer"),
                          ("train_scorer", "evaluate_scorer")]:
        assert stages.index(before) < stages.index(after), (before, after, stages)
    clean = json.loads((repo / "metrics/clean.json").read_text())
    assert clean["records_in"] == clean["kept"] + clean["rejected"] and clean["accounting_ok"]
    # the sample corpus carries each kind of noise clean removes; files (a curated FAQ) loses nothing
    assert {"spam", "language", "duplicate_exact", "duplicate_semantic", "url", "too_short"} <= set(clean["reasons"])
    assert clean["kept_by_origin"]["files"] == 22 and "files" not in clean["rejected_by_origin"]
    rejected = [json.loads(line) for line in (repo / "data/clean/rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == clean["rejected"] and all(r["reasons"] for r in rejected)
    chatml = json.loads((repo / "metrics/chatml.json").read_text())
    synth = json.loads((repo / "metrics/synthesize.json").read_text())
    assert synth["documents"] > 0 and synth["pairs"] > 0
    assert run_facts(repo, "synthesize")["oracle"]["calls"] == synth["documents"]
    pairs = [json.loads(line) for line in (repo / "data/synth/pairs.jsonl").read_text().splitlines()]
    assert all(p["meta"]["citation"]["arxiv_id"] and p["meta"]["citation"]["title"] for p in pairs)
    assert chatml["rows_out"] == sum(v for k, v in clean["kept_by_origin"].items() if k != "arxiv") + len(pairs)
    assert sum(chatml["chars"]["histogram"].values()) == chatml["rows_out"]
    calibration = json.loads((repo / "metrics/calibration.json").read_text())
    assert calibration["verdict"] in ("PASS", "REVIEW", "FAIL") and calibration["gate"] == "warn"
    assert calibration["validation"]["verdict"] in ("PASS", "REVIEW", "FAIL")
    assert (repo / "reports/calibration.md").read_text().startswith("# Oracle calibration")
    # the shipped gold file is read: the embedded oracle's agreement with it fails, and the warn gate says so
    assert calibration["gold"]["file"] == "data/gold/sample.jsonl" and calibration["agreement"]["n"] > 0
    assert calibration["gate_failures"] and any(f.startswith("gold FAIL") for f in calibration["gate_failures"])
    label = json.loads((repo / "metrics/label.json").read_text())
    assert label["labelled"] == chatml["rows_out"] and label["accounting_ok"]
    assert label["gate_failures"] == calibration["gate_failures"]  # under warn: recorded, not enforced
    # calibration's rows were labelled there first: label pays only for the rest
    label_run = run_facts(repo, "label")["oracle"]
    assert label_run["cache_hits"] > 0 and label_run["calls"] + label_run["cache_hits"] == chatml["rows_out"]
    for stage in ("synthesize", "calibrate", "label"):  # what a run did is in its run facts, never in a DVC output
        facts = run_facts(repo, stage)["oracle"]
        assert {"calls", "cache_hits", "tokens_in", "tokens_out", "usd", "seconds"} <= set(facts), (stage, facts)
    for metrics_of_stage in (label, calibration, synth):
        assert metrics_of_stage["oracle"]["backend"] == "local" and "calls" not in metrics_of_stage["oracle"]
    raw = (repo / "data/raw/sample.jsonl").read_text()
    assert '"fetched_at": null' in raw and '"run_id": null' in raw  # a local source is no snapshot
    split = json.loads((repo / "metrics/split.json").read_text())
    assert split["leakage"]["gate"] == "semantic" and len(split["test_fingerprint"]) == 64
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    for side in ("base", "tuned", "delta"):
        for key in ("perplexity", "token_accuracy", "rouge_l", "probe_accuracy", "hallucination_rate"):
            assert isinstance(metrics[side][key], float), (side, key)
    for domain in DOMAINS:  # each domain trained its own adapter on its own rows
        train = json.loads((repo / f"metrics/train/{domain}/metrics.json").read_text())
        assert {"train_eval_gap", "overfit_flag", "best_eval_loss", "last_eval_loss", "train_once_loss"} <= set(train)
        assert (repo / f"metrics/train/{domain}/plots/metrics/train/loss.tsv").exists()
        assert (repo / f"metrics/train/{domain}/plots/metrics/eval/loss.tsv").exists()
        card = json.loads((repo / f"models/adapters/{domain}/slmforge_adapter.json").read_text())
        assert card["metrics"]["train_examples"] > 0
    weights = {(repo / f"models/adapters/{d}/adapter_model.safetensors").read_bytes() for d in DOMAINS}
    assert len(weights) == 2
    # the tweets domain is evaluated on tweet replies only, without probes; stats on its items and every probe
    tweets = json.loads((repo / "metrics/eval/tweets.json").read_text())
    assert tweets["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and tweets["base"]["probes"] == 0
    assert not any("facts" in k or "stackexchange" in k for k in tweets["per_source"]), tweets["per_source"]
    assert metrics["base"]["probes"] > 0
    domains_md = (repo / "reports/domains.md").read_text()
    assert domains_md.startswith("# Domains") and f"**{metrics['verdict']}**" in domains_md
    assert "| stats |" in domains_md and "| tweets |" in domains_md
    # the probes on the full-precision base too, and latency in its own metric
    numerics = metrics["numerics"]
    assert set(numerics["sides"]) == {"nf4", "nf4+adapter", "full", "full+adapter"} and numerics["probes"] > 0
    assert "## Numerics" in (repo / "reports/eval/stats/eval.md").read_text()
    latency = json.loads((repo / "metrics/runs/latency/stats.json").read_text())
    assert latency["base"]["queries"] == latency["tuned"]["queries"] == 2
    assert 0 < latency["tuned"]["median_s"] <= latency["tuned"]["p95_s"] and latency["tuned"]["tokens_per_s"] > 0
    assert "latency" not in metrics
    assert metrics["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and metrics["reasons"]
    for key in ("wilcoxon_p", "mannwhitney_p", "cohens_d", "cliffs_delta", "judge_win_rate", "judge_inconsistency"):
        assert key in metrics["stats"], key
    judge = metrics["judge"]
    assert judge["items"] == metrics["base"]["items"] and judge["judged"] + judge["failed"] == judge["items"]
    # each test item in both orders, but two identical answers are a tie without a call
    judge_calls = run_facts(repo, "evaluate/stats")["oracle"]["calls"]
    assert 0 < judge_calls <= 2 * (judge["items"] - judge["identical"]), (judge_calls, judge)
    refs = metrics["base"]["references"]  # accounting to the end: every test row's reference is counted
    assert refs["rows_in"] == metrics["base"]["items"] == refs["scored"] + refs["answer_truncated_away"]
    rows = json.loads((repo / "metrics/train/stats/metrics.json").read_text())["rows"]  # the domain's selection
    assert rows["train"]["accounting_ok"] and 0 < rows["train"]["rows_in"] <= split["counts"]["train"], rows
    assert 0 < rows["val"]["rows_in"] <= split["counts"]["val"] and rows["val"]["accounting_ok"], rows
    # the tiny profile's first test items may all come from one origin; the probes are facts
    assert "sample:facts" in metrics["per_source"] and len(metrics["per_source"]) >= 2, metrics["per_source"]
    assert metrics["overfitting"]["last_step"] >= metrics["overfitting"]["best_step"]
    report = (repo / "reports/eval/stats/eval.md").read_text()
    assert report.startswith(f"# Evaluation: **{metrics['verdict']}**") and "probe_accuracy" in report
    assert report.splitlines()[4].startswith("Overfitting: **")
    # the cost: $0 for the local oracle, every call counted, stage by stage
    cost = json.loads((repo / "metrics/runs/cost.json").read_text())
    assert cost["total"]["usd"] == 0 and cost["total"]["calls"] == sum(
        run_facts(repo, s)["oracle"]["calls"] for s in ("synthesize", "calibrate", "label", "evaluate/stats",
                                                        "evaluate/tweets")) > 0
    assert (repo / "reports/cost.md").read_text().startswith("# Oracle cost")
    assert "## Test items side by side" in report
    for name in ("eval_per_source/stats", "eval_per_source/tweets", "eval_judge/stats", "calibration"):
        assert json.loads((repo / f"metrics/plots/{name}.json").read_text()), name
    # `dvc plots show` draws every plot on one page that needs no network
    sh("dvc plots show -o plots_page", repo)
    page = (repo / "plots_page/index.html").read_text()
    assert "Judge outcomes" in page and "https://cdn" not in page
    shutil.rmtree(repo / "plots_page")
    scorer = json.loads((repo / "metrics/scorer.json").read_text())
    assert scorer["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and scorer["n_test"] == split["counts"]["test"]
    assert set(scorer["per_dimension"]) == {"relevance", "correctness", "helpfulness"}
    assert isinstance(scorer["mae"], float) and isinstance(scorer["rmse"], float)
    assert isinstance(scorer["mean_baseline"]["mae"], float) and "self_consistency_mad" in scorer["oracle_noise"]
    assert (repo / "reports/scorer.md").read_text().startswith("# Student scorer against the oracle")
    # the cheap stand-in for the oracle scores the split's holdout
    out = sh("slmforge score data/split/test.jsonl --out scored.jsonl", repo).stdout
    scored = [json.loads(line) for line in (repo / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == scorer["n_test"] and all(s["tier"] for s in scored), out
    (repo / "scored.jsonl").unlink()
    card = (repo / "models/adapters/stats/README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert (repo / "checkpoints/train/stats").is_dir() and not list((repo / "checkpoints/train").rglob("checkpoint-*"))
    sh("git add -A && git commit -qm run", repo)


def test_second_repro_executes_nothing(repo):
    out = sh("dvc repro", repo).stdout
    assert ran(out) == [], out


def test_forced_rerun_of_the_oracle_stages_makes_zero_calls(repo):
    before = json.loads((repo / "metrics/eval/stats.json").read_text())
    judge_calls = run_facts(repo, "evaluate/stats")["oracle"]["calls"]
    lock = (repo / "dvc.lock").read_text()
    sh("dvc repro -f -s synthesize && dvc repro -f -s calibrate && dvc repro -f -s label && "
       "dvc repro -f -s evaluate@stats", repo)
    for stage in ("synthesize", "calibrate", "label", "evaluate/stats"):
        oracle = run_facts(repo, stage)["oracle"]
        assert oracle["calls"] == 0 and oracle["cache_hits"] > 0, (stage, oracle)
    assert run_facts(repo, "evaluate/stats")["oracle"]["cache_hits"] >= judge_calls
    # evaluate generated nothing again either (cached by model, adapter and prompt), and decided the same
    after = json.loads((repo / "metrics/eval/stats.json").read_text())
    n = after["base"]["items"] + after["base"]["probes"]
    assert run_facts(repo, "evaluate/stats")["generations_cached"] == {"base": n, "tuned": n}
    assert (after["verdict"], after["stats"]) == (before["verdict"], before["stats"])
    # every output, metrics included, is a function of deps and params: the forced runs changed no byte of any
    assert (repo / "dvc.lock").read_text() == lock
    status = sh("dvc status", repo).stdout
    assert "up to date" in status.lower(), status
    assert ran(sh("dvc repro", repo).stdout) == []


def test_collector_code_change_recollects_local_sources_and_nothing_after(repo):
    # A local source depends on the code (it re-reads its files in seconds); a live API's pull is the artifact and
    # depends on none (tests/test_lineage.py checks that). The same files give the same records, so nothing after
    # the collect stages runs again.
    for name in ("files.py", "stackexchange.py", "sample.py"):
        path = repo / "src/slmforge/sources" / name
        path.write_text(path.read_text() + "\n# edited\n")
    out = sh("dvc repro", repo).stdout
    assert sorted(ran(out)) == ["collect@files", "collect@sample"], out
    sh("git checkout -- src/slmforge/sources && dvc repro", repo)


def test_adapter_loads_with_plain_peft_in_a_fresh_process(repo):
    item = next(json.loads(line) for line in (repo / "reports/eval/stats/items.jsonl").read_text().splitlines()
                if json.loads(line)["kind"] == "probe")
    probe = next(json.loads(line) for line in (repo / "data/split/probes.jsonl").read_text().splitlines()
                 if json.loads(line)["id"] == item["id"])
    script = textwrap.dedent(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
        from peft import PeftModel
        messages = json.loads({json.dumps(json.dumps(probe["messages"][:-1]))})
        dtype = torch.bfloat16 if "avx512_bf16" in open("/proc/cpuinfo").read() else torch.float32
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
        tok = AutoTokenizer.from_pretrained("models/adapters/stats")
        base = AutoModelForCausalLM.from_pretrained("models/base", quantization_config=q, dtype=dtype,
                                                    device_map={{"": "cpu"}})
        model = PeftModel.from_pretrained(base, "models/adapters/stats").eval()
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
        print(json.dumps(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()))
    """)
    path = repo.parent / "load_adapter.py"
    path.write_text(script)
    out = sh(f"python {path}", repo).stdout.strip().splitlines()[-1]
    assert json.loads(out) == item["tuned"]["generation"]


def test_param_change_runs_exactly_train_and_evaluate_and_a_killed_train_resumes(repo):
    set_conf(repo, "lora/r16.yaml", "r", "8")
    set_conf(repo, "train/tiny.yaml", "max_steps", "10")
    tiny_eval = repo / "conf/eval/tiny.yaml"  # and the judge off: evaluate decides on the paired metric alone
    tiny_eval.write_text(tiny_eval.read_text().replace("  enabled: true", "  enabled: false"))
    # conf/ edited without `dvc exp run`: the first stage to run refuses with one line
    stale = sh("dvc repro", repo, check=False)
    assert stale.returncode != 0 and ran(stale.stdout) == ["check_params"], stale.stdout
    errors = [line for line in stale.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "params.yaml is stale" in errors[0], stale.stderr
    assert any(key in errors[0] for key in ("lora.r", "train.max_steps", "eval.judge.enabled")), errors[0]
    sh("python -m slmforge.cli compose", repo)

    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env.update(PATH=f"{BIN}:{env['PATH']}", HF_HUB_OFFLINE="1", SLMFORGE_CACHE=str(repo.parent / "store"))
    first = subprocess.Popen("dvc repro", shell=True, cwd=repo, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 600
    while not list((repo / "checkpoints/train").rglob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline
        time.sleep(0.5)
    time.sleep(1.0)  # let the checkpoint finish writing
    os.killpg(first.pid, signal.SIGKILL)  # the machine dies mid-train
    first.wait()
    lock = repo / ".dvc/tmp/rwlock"
    if lock.exists():
        lock.unlink()  # a killed dvc leaves its lock; dvc itself says to remove it

    out = sh("dvc repro", repo).stdout
    # check_params passed in the killed run (conf/ is unchanged since), so exactly train and evaluate run
    # check_params passed in the killed run; train@stats was killed after its checkpoint: train and evaluate of each
    # domain run again (and the reports that read their metrics), and the killed one resumes
    assert set(DOMAIN_STAGES) <= set(ran(out)) <= {*DOMAIN_STAGES, "domains", "cost"}, out
    resumed = [run_facts(repo, f"train/{d}") for d in DOMAINS]
    trained = [json.loads((repo / f"metrics/train/{d}/metrics.json").read_text()) for d in DOMAINS]
    assert max(r["resumed_from_step"] for r in resumed) >= 2 and all(t["last_step"] == 10 for t in trained)
    adapter = json.loads((repo / "models/adapters/stats/adapter_config.json").read_text())
    assert adapter["r"] == 8
    evaluation = json.loads((repo / "metrics/eval/stats.json").read_text())
    assert evaluation["judge"] is None and evaluation["stats"]["judge_win_rate"] is None
    assert evaluation["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and "oracle" not in evaluation
    sh("git add -A && git commit -qm r8", repo)


def test_push_then_pull_into_a_fresh_clone_restores_every_output(repo):
    sh("dvc push", repo)
    clone = repo.parent / "clone"  # beside repo, so the relative default remote is the same folder
    sh(f"git clone -q {repo} {clone}", repo.parent)
    sh("dvc pull", clone)
    for rel in ["models/base/model.safetensors", "models/adapters/stats/adapter_model.safetensors",
                "models/adapters/tweets/adapter_model.safetensors", "data/split/train.jsonl", "data/raw/sample.jsonl", "data/chatml/all.jsonl"]:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    status = sh("dvc status", clone).stdout
    assert "up to date" in status.lower(), status
    # A teammate with an empty answer store re-runs label: the answers come back from DVC's cache, not the oracle.
    sh("dvc repro -f -s label", clone, store=clone.parent / "teammate_store")
    oracle = run_facts(clone, "label")["oracle"]
    assert oracle["calls"] == 0 and oracle["cache_hits"] > 0, oracle
    assert (clone / "data/labels/labels.jsonl").read_bytes() == (repo / "data/labels/labels.jsonl").read_bytes()


def run_queue(repo: Path, workers: int) -> tuple[str, list[tuple[str, datetime, datetime]], float]:
    """`dvc queue start -j workers`, waiting until the queue is empty: (final status, the (worker, received,
    finished) of each experiment this start ran, seconds)."""
    start, since = time.time(), datetime.now().replace(microsecond=0)
    # The workers run on after `dvc queue start` returns; with pipes, waiting for its output waited for them too.
    sh(f"dvc queue start -j {workers}", repo, timeout=300, log=repo.parent / f"queue_start_j{workers}.log")
    deadline = start + 3600  # two experiments at once on 2 cores took 390-970 s each
    while True:
        proc = sh("dvc queue status", repo, check=False)  # may fail while a worker holds the repo: ask again
        status = proc.stdout
        if proc.returncode == 0 and "Queued" not in status and "Running" not in status:
            return status, worker_tasks(repo, since), time.time() - start
        assert time.time() < deadline, status + proc.stderr
        time.sleep(3)


def worker_tasks(repo: Path, since: datetime) -> list[tuple[str, datetime, datetime]]:
    """(worker, started, finished) of every experiment a queue worker finished after `since`, from the workers'
    own logs (.dvc/tmp/exps/celery/dvc-exp-worker-N.out: "Task ...[id] succeeded in S s", celery's local time);
    started is finished minus S (a worker may log "received" for a task it prefetched before it starts it)."""
    pattern = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+): INFO/MainProcess\] Task \S+\[[0-9a-f-]+\] "
                         r"succeeded in ([\d.]+)s")
    tasks = []
    for log in sorted((repo / ".dvc/tmp/exps/celery").glob("dvc-exp-worker-*.out")):
        for line in log.read_text().splitlines():
            match = pattern.match(line)
            if match:
                finished = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
                if finished >= since:
                    tasks.append((log.stem, finished - timedelta(seconds=float(match[2])), finished))
    return sorted(tasks, key=lambda t: t[1])


def test_queued_sweep_runs_only_train_and_evaluate(repo):
    # every point differs from the baseline (r=8, lr=2e-4): a point equal to it would rightly run nothing
    sh("dvc exp run --queue -S 'lora.r=4,16' -S 'train.lr=1e-4,3e-4'", repo)
    status, tasks, seconds = run_queue(repo, 1)
    assert len(tasks) == 4 and all(b <= a2 for (_, _, b), (_, a2, _) in zip(tasks, tasks[1:])), tasks  # one at a time
    (repo.parent / "timings.json").write_text(json.dumps({"j1_four_experiments_s": seconds}))
    assert status.count("Success") == 4, status
    exps = json.loads(sh("dvc exp show --json", repo).stdout)
    names = [e["name"] for row in exps for e in (row.get("experiments") or []) if e.get("name")]
    assert len(names) == 4, names
    for name in names:
        log = sh(f"dvc queue logs {name}", repo).stdout
        assert set(DOMAIN_STAGES) <= set(ran(log)) <= {*DOMAIN_STAGES, "domains", "cost"}, (name, ran(log))
    diff = sh(f"dvc metrics diff HEAD {names[0]}", repo).stdout
    assert "metrics/eval/stats.json" in diff and "metrics/eval/tweets.json" in diff


# --- experiments run by two workers, and the cache they share ---------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def experiment_refs(repo: Path) -> dict[str, str]:
    """name -> commit of every experiment (refs/exps/<2 hex>/<baseline sha>/<name>)."""
    refs = {}
    for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps").splitlines():
        ref, sha = line.split()
        if len(ref.split("/")) == 5:
            refs[ref.rsplit("/", 1)[1]] = sha
    return refs


def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]


def outs_of(repo: Path, rev: str) -> dict[str, str]:
    """Every stage output of a revision's dvc.lock: path -> md5."""
    import yaml

    lock = yaml.safe_load(git(repo, "show", f"{rev}:dvc.lock"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def uncached(repo: Path, path: str) -> bool:
    """Whether dvc.yaml marks `path` `cache: false` (the metrics, kept in git)."""
    import fnmatch

    import yaml

    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        body = stage.get("do", stage)
        for entry in [*body.get("outs", []), *body.get("metrics", [])]:
            if isinstance(entry, dict):
                (pattern, opts), = entry.items()
                if opts.get("cache") is False and fnmatch.fnmatch(path, pattern.replace("${key}", "*")):
                    return True
    return False


def cached_file(repo: Path, outs: dict[str, str], path: str) -> bytes:
    """A file of a revision as DVC has it: the output itself, or a file inside an output folder."""
    for out, md5 in outs.items():
        if path == out:
            return cache_object(repo, md5).read_bytes()
        if path.startswith(out + "/"):
            listing = json.loads(cache_object(repo, md5).read_text())
            entry = next(e for e in listing if e["relpath"] == path[len(out) + 1:])
            return cache_object(repo, entry["md5"]).read_bytes()
    raise KeyError(path)


def test_two_queue_workers_give_the_results_of_one_at_a_time(repo):
    # Two points of the sweep above again, forced to execute (their results are in the run-cache now), by two
    # workers at once; each must give what the one-worker queue gave.
    points = {"par-r4": "-S lora.r=4 -S train.lr=1e-4", "par-r16": "-S lora.r=16 -S train.lr=3e-4"}
    for name, sets in points.items():
        sh(f"dvc exp run --queue -n {name} -f -s {sets} {' '.join(DOMAIN_STAGES)}", repo)
    status, tasks, seconds = run_queue(repo, 2)
    for name in points:
        assert any(name in line and "Success" in line for line in status.splitlines()), status
    # two workers, each running one of them, at the same time
    assert len(tasks) == 2 and tasks[0][0] != tasks[1][0], tasks
    overlap = (min(t[2] for t in tasks) - max(t[1] for t in tasks)).total_seconds()
    assert overlap > 0, f"the two experiments did not run at the same time: {tasks}"
    refs = experiment_refs(repo)
    import yaml

    def params_of(rev: str) -> tuple:
        params = yaml.safe_load(git(repo, "show", f"{rev}:params.yaml"))
        return params["lora"]["r"], params["train"]["lr"]

    report = {}
    for name in points:
        log = sh(f"dvc queue logs {name}", repo).stdout
        assert set(DOMAIN_STAGES) <= set(ran(log)) <= {*DOMAIN_STAGES, "domains", "cost"}, (name, ran(log))
        twin = next(n for n, rev in refs.items() if n not in points and params_of(rev) == params_of(refs[name]))
        mine, theirs = outs_of(repo, refs[name]), outs_of(repo, refs[twin])
        train_a, train_b = (json.loads(cached_file(repo, o, "metrics/train/stats/metrics.json")) for o in (mine, theirs))
        for key in ("train_loss", "eval_loss", "best_eval_loss", "best_step", "last_step"):
            assert train_a[key] == pytest.approx(train_b[key], abs=1e-4), (name, twin, key, train_a[key], train_b[key])
        eval_a, eval_b = (json.loads(git(repo, "show", f"{refs[n]}:metrics/eval/stats.json")) for n in (name, twin))
        assert eval_a["verdict"] == eval_b["verdict"]
        for key in ("rouge_l", "perplexity", "token_accuracy"):
            assert eval_a["tuned"][key] == pytest.approx(eval_b["tuned"][key], abs=1e-4), (name, key)
        weights = [cached_file(repo, o, "models/adapters/stats/adapter_model.safetensors") for o in (mine, theirs)]
        report[name] = {"twin": twin, "adapter_identical": weights[0] == weights[1],
                        "eval_loss": [train_a["eval_loss"], train_b["eval_loss"]]}

    # Nothing in the shared cache is corrupt: every output of every experiment is there, and every object's
    # content hashes to its name (a folder's listing included).
    for rev in [*refs.values(), "HEAD"]:
        for out, md5 in outs_of(repo, rev).items():
            if uncached(repo, out):
                continue
            assert cache_object(repo, md5).exists(), (rev, out)
            if md5.endswith(".dir"):
                for entry in json.loads(cache_object(repo, md5).read_text()):
                    assert cache_object(repo, entry["md5"]).exists(), (rev, out, entry["relpath"])
    objects = [p for p in (repo / ".dvc/cache/files/md5").glob("*/*") if p.is_file()]
    for path in objects:
        name = path.parent.name + path.name.removesuffix(".dir")
        assert hashlib.md5(path.read_bytes()).hexdigest() == name, path
    timings = json.loads((repo.parent / "timings.json").read_text())
    timings.update(j2_two_experiments_s=seconds, cache_objects_checked=len(objects), comparison=report)
    (repo.parent / "timings.json").write_text(json.dumps(timings, indent=1))


# --- a shared remote on S3 ---------------------------------------------------------------------------------------

def objects_named_by_run_records(repo: Path) -> dict[str, str]:
    """md5 -> output path of every object the local run-cache's records name (a folder's listing and its files)."""
    import yaml

    named = {}
    for record in (repo / ".dvc/cache/runs").glob("*/*/*"):
        for out in yaml.safe_load(record.read_text())["outs"]:
            named[out["md5"]] = out["path"]
            if out["md5"].endswith(".dir"):
                for entry in json.loads(cache_object(repo, out["md5"]).read_text()):
                    named[entry["md5"]] = f"{out['path']}/{entry['relpath']}"
    return named


def remote_objects(endpoint: str, env: dict[str, str]) -> set[str]:
    """md5 of every object on the test bucket's DVC remote (files/md5/<2>/<30>)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    found = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="slmforge-e2e", Prefix="dvcstore/files/md5/"):
        for item in page.get("Contents", []):
            first, rest = item["Key"].split("/")[-2:]
            found.add(first + rest)
    return found

@pytest.fixture
def s3(tmp_path):
    """moto's S3 server on 127.0.0.1 with a bucket, and the fake credentials (environment only, never a file)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "e2e-fake-key-id", "AWS_SECRET_ACCESS_KEY": f"e2e-fake-secret-{os.getpid()}",
           "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1").create_bucket(
        Bucket="slmforge-e2e")
    yield endpoint, env
    server.stop()


def test_s3_remote_push_pull_and_a_teammate_restores_every_stage_from_the_run_cache(repo, s3):
    endpoint, env = s3
    add = f"dvc remote add {{}} -d s3remote s3://slmforge-e2e/dvcstore && dvc remote modify {{}} s3remote endpointurl {endpoint}"
    sh(add.format("", ""), repo)
    sh("git add .dvc/config && git commit -qm 's3 remote'", repo)
    sh("dvc push --run-cache", repo, extra_env=env, timeout=1200)
    # DVC 3.6x sends the run records and this commit's outputs, not the outputs the other records name (the sweep's
    # experiments, the first commit's train) nor any `cache: false` metric: a teammate's restore would need them.
    named = objects_named_by_run_records(repo)
    missing = set(named) - remote_objects(endpoint, env)
    assert any(named[md5].startswith("metrics/") for md5 in missing), sorted(named[md5] for md5 in missing)
    # slmforge push: the same, then every object the records name
    out = sh("python -m slmforge.cli push", repo, extra_env=env, timeout=1200).stdout
    sent = int(re.search(r"(\d+) sent now", out)[1])
    assert sent >= len(missing), (out, len(missing))
    assert not set(named) - remote_objects(endpoint, env)  # every object every run record names is on the remote
    assert env["AWS_SECRET_ACCESS_KEY"] not in (repo / ".dvc/config").read_text() + (repo / "dvc.lock").read_text()

    # a fresh clone pulls every output of the last commit
    clone = repo.parent / "s3clone"
    sh(f"git clone -q {repo} {clone}", repo.parent)
    sh("dvc pull", clone, store=repo.parent / "s3clone_store", extra_env=env)
    for rel in ["models/base/model.safetensors", "models/adapters/stats/adapter_model.safetensors",
                "data/split/train.jsonl", "reports/eval/stats/eval.md", "metrics/train/tweets/metrics.json",
                "reports/domains.md"]:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert "up to date" in sh("dvc status", clone, extra_env=env).stdout.lower()

    # A teammate on the first commit, which has no dvc.lock: no output and no lock entry, so only the run-cache
    # pushed above can say what each stage made. Every stage must come back without running.
    mate = repo.parent / "teammate"
    store = repo.parent / "teammate_empty_store"
    sh(f"git clone -q {repo} {mate}", repo.parent)
    first = git(mate, "rev-list", "--max-parents=0", "HEAD").strip()
    sh(f"git checkout -q {first}", mate)
    assert not (mate / "dvc.lock").exists() and not (mate / "models").exists()
    sh(add.format("--local", "--local"), mate)  # that commit predates the shared remote
    out = sh("dvc repro --pull", mate, store=store, extra_env=env, timeout=1200)
    # only cost runs: it declares no output (its figures are run facts), so the run-cache has nothing to restore
    assert set(ran(out.stdout)) <= {"cost"}, out.stdout[-3000:]
    restored = [line.split("'")[1] for line in out.stdout.splitlines() if "is cached - skipping run" in line]
    # cost declares no output (it writes run facts only): nothing to restore, it runs again in a second
    assert sorted(set(restored) - {"cost"}) == sorted(["check_params", "collect@files", "collect@sample", "base",
                                                       "oracle_model", "clean", "synthesize", "chatml", "calibrate",
                                                       "label", "split", *DOMAIN_STAGES, "domains", "train_scorer",
                                                       "evaluate_scorer"]), out.stdout[-3000:]
    for stage in ("synthesize", "calibrate", "label", "evaluate/stats"):  # the answers somebody paid for
        assert list((mate / "data/oracle_cache" / stage).rglob("*.json*")), stage
    assert not store.exists() or not list(store.rglob("*.json*"))  # nothing was asked of the oracle
    assert "up to date" in sh("dvc status", mate, extra_env=env).stdout.lower()

    # Back on the last commit, an experiment someone already ran in the sweep (r=4, lr=1e-4): the unchanged stages
    # are pulled, train and evaluate come from the run-cache.
    sh("git checkout -q -f - && git config user.email t@t && git config user.name t", mate)
    out = sh("dvc exp run --pull -S lora.r=4 -S train.lr=1e-4", mate, store=store, extra_env=env, timeout=1200)
    assert set(ran(out.stdout)) <= {"cost"}, out.stdout[-3000:]
    assert set(DOMAIN_STAGES) <= {line.split("'")[1] for line in out.stdout.splitlines()
                                    if "is cached - skipping run" in line}, out.stdout[-3000:]
    assert json.loads((mate / "models/adapters/stats/adapter_config.json").read_text())["r"] == 4
    sweep_weights = {cached_file(repo, outs_of(repo, rev), "models/adapters/stats/adapter_model.safetensors")
                     for rev in experiment_refs(repo).values()}
    assert (mate / "models/adapters/stats/adapter_model.safetensors").read_bytes() in sweep_weights
