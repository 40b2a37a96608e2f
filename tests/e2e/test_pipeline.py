"""The whole DAG as a user runs it, in a fresh copy of the repo, on the tiny train and eval profiles.

One repository (tests/e2e/conftest.py): its first `dvc repro` runs every stage, collect to evaluate, with the local
oracle calibrating, labelling and synthesizing; the first tests read one property each of what that run made. Then
a no-op repro, a forced re-run of the oracle stages that makes zero calls, a collector's code change, the adapter
in a fresh process, and last a param change that re-runs exactly train and evaluate (killed mid-train, resumed).
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from tests.e2e.conftest import DOMAIN_STAGES, DOMAINS, ran, run_facts, sh

pytestmark = pytest.mark.slow


# --- what the first repro made -----------------------------------------------------------------------------------

def test_repro_runs_the_whole_dag(first_repro):
    _, out = first_repro
    stages = ran(out)
    order = ["check_params", "collect@files", "collect@sample", "base", "oracle_model", "clean", "synthesize", "chatml",
             "calibrate", "label", "split", *DOMAIN_STAGES, "domains", "cost", "train_scorer", "evaluate_scorer"]
    assert sorted(stages) == sorted(order), stages
    for before, after in [("clean", "synthesize"), ("oracle_model", "synthesize"), ("synthesize", "chatml"),
                          ("chatml", "calibrate"), ("calibrate", "label"), ("label", "split"), ("split", "train@stats"),
                          ("split", "train@tweets"), ("train@stats", "evaluate@stats"),
                          ("train@tweets", "evaluate@tweets"), ("evaluate@stats", "domains"),
                          ("evaluate@tweets", "domains"), ("evaluate@stats", "cost"), ("evaluate@tweets", "cost"),
                          ("split", "train_scorer"), ("train_scorer", "evaluate_scorer")]:
        assert stages.index(before) < stages.index(after), (before, after, stages)


def test_a_local_source_is_no_snapshot(repo):
    raw = (repo / "data/raw/sample.jsonl").read_text()
    assert '"fetched_at": null' in raw and '"run_id": null' in raw  # a local source is no snapshot


def test_clean_accounts_for_every_record_it_rejects(repo):
    clean = json.loads((repo / "metrics/clean.json").read_text())
    assert clean["records_in"] == clean["kept"] + clean["rejected"] and clean["accounting_ok"]
    # the sample corpus carries each kind of noise clean removes; files (a curated FAQ) loses nothing
    assert {"spam", "language", "duplicate_exact", "duplicate_semantic", "url", "too_short"} <= set(clean["reasons"])
    assert clean["kept_by_origin"]["files"] == 22 and "files" not in clean["rejected_by_origin"]
    rejected = [json.loads(line) for line in (repo / "data/clean/rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == clean["rejected"] and all(r["reasons"] for r in rejected)


def test_synthesize_makes_cited_pairs_with_one_call_per_document(repo):
    synth = json.loads((repo / "metrics/synthesize.json").read_text())
    assert synth["documents"] > 0 and synth["pairs"] > 0
    assert run_facts(repo, "synthesize")["oracle"]["calls"] == synth["documents"]
    pairs = [json.loads(line) for line in (repo / "data/synth/pairs.jsonl").read_text().splitlines()]
    assert all(p["meta"]["citation"]["arxiv_id"] and p["meta"]["citation"]["title"] for p in pairs)


def test_chatml_holds_every_kept_record_but_the_papers_and_every_pair(repo):
    clean = json.loads((repo / "metrics/clean.json").read_text())
    chatml = json.loads((repo / "metrics/chatml.json").read_text())
    pairs = [json.loads(line) for line in (repo / "data/synth/pairs.jsonl").read_text().splitlines()]
    assert chatml["rows_out"] == sum(v for k, v in clean["kept_by_origin"].items() if k != "arxiv") + len(pairs)
    assert sum(chatml["chars"]["histogram"].values()) == chatml["rows_out"]


def test_calibration_reads_the_gold_file_and_the_warn_gate_records_its_failure(repo):
    calibration = json.loads((repo / "metrics/calibration.json").read_text())
    assert calibration["verdict"] in ("PASS", "REVIEW", "FAIL") and calibration["gate"] == "warn"
    assert calibration["validation"]["verdict"] in ("PASS", "REVIEW", "FAIL")
    assert (repo / "reports/calibration.md").read_text().startswith("# Oracle calibration")
    # the shipped gold file is read: the embedded oracle's agreement with it fails, and the warn gate says so
    assert calibration["gold"]["file"] == "data/gold/sample.jsonl" and calibration["agreement"]["n"] > 0
    assert calibration["gate_failures"] and any(f.startswith("gold FAIL") for f in calibration["gate_failures"])


def test_label_labels_every_row_and_pays_only_for_those_calibration_did_not(repo):
    chatml = json.loads((repo / "metrics/chatml.json").read_text())
    calibration = json.loads((repo / "metrics/calibration.json").read_text())
    label = json.loads((repo / "metrics/label.json").read_text())
    assert label["labelled"] == chatml["rows_out"] and label["accounting_ok"]
    assert label["gate_failures"] == calibration["gate_failures"]  # under warn: recorded, not enforced
    # calibration's rows were labelled there first: label pays only for the rest
    label_run = run_facts(repo, "label")["oracle"]
    assert label_run["cache_hits"] > 0 and label_run["calls"] + label_run["cache_hits"] == chatml["rows_out"]


def test_what_the_oracle_did_is_a_run_fact_never_a_dvc_output(repo):
    for stage in ("synthesize", "calibrate", "label"):  # what a run did is in its run facts, never in a DVC output
        facts = run_facts(repo, stage)["oracle"]
        assert {"calls", "cache_hits", "tokens_in", "tokens_out", "usd", "seconds"} <= set(facts), (stage, facts)
    for name in ("label", "calibration", "synthesize"):
        metrics_of_stage = json.loads((repo / f"metrics/{name}.json").read_text())
        assert metrics_of_stage["oracle"]["backend"] == "local" and "calls" not in metrics_of_stage["oracle"]


def test_split_gates_leakage_semantically_and_fingerprints_the_test_set(repo):
    split = json.loads((repo / "metrics/split.json").read_text())
    assert split["leakage"]["gate"] == "semantic" and len(split["test_fingerprint"]) == 64


def test_each_domain_trains_an_adapter_of_its_own(repo):
    for domain in DOMAINS:  # each domain trained its own adapter on its own rows
        train = json.loads((repo / f"metrics/train/{domain}/metrics.json").read_text())
        assert {"train_eval_gap", "overfit_flag", "best_eval_loss", "last_eval_loss", "train_once_loss"} <= set(train)
        assert (repo / f"metrics/train/{domain}/plots/metrics/train/loss.tsv").exists()
        assert (repo / f"metrics/train/{domain}/plots/metrics/eval/loss.tsv").exists()
        card = json.loads((repo / f"models/adapters/{domain}/slmforge_adapter.json").read_text())
        assert card["metrics"]["train_examples"] > 0
    weights = {(repo / f"models/adapters/{d}/adapter_model.safetensors").read_bytes() for d in DOMAINS}
    assert len(weights) == 2


def test_train_accounts_for_every_row_of_its_domain(repo):
    split = json.loads((repo / "metrics/split.json").read_text())
    rows = json.loads((repo / "metrics/train/stats/metrics.json").read_text())["rows"]  # the domain's selection
    assert rows["train"]["accounting_ok"] and 0 < rows["train"]["rows_in"] <= split["counts"]["train"], rows
    assert 0 < rows["val"]["rows_in"] <= split["counts"]["val"] and rows["val"]["accounting_ok"], rows


def test_training_leaves_a_card_naming_the_base_and_no_checkpoint(repo):
    card = (repo / "models/adapters/stats/README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert (repo / "checkpoints/train/stats").is_dir() and not list((repo / "checkpoints/train").rglob("checkpoint-*"))


def test_evaluate_measures_base_tuned_and_delta_and_decides(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    for side in ("base", "tuned", "delta"):
        for key in ("perplexity", "token_accuracy", "rouge_l", "probe_accuracy", "hallucination_rate"):
            assert isinstance(metrics[side][key], float), (side, key)
    assert metrics["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and metrics["reasons"]
    for key in ("wilcoxon_p", "mannwhitney_p", "cohens_d", "cliffs_delta", "judge_win_rate", "judge_inconsistency"):
        assert key in metrics["stats"], key
    # the tiny profile's first test items may all come from one origin; the probes are facts
    assert "sample:facts" in metrics["per_source"] and len(metrics["per_source"]) >= 2, metrics["per_source"]
    assert metrics["overfitting"]["last_step"] >= metrics["overfitting"]["best_step"]


def test_evaluate_counts_every_test_rows_reference(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    refs = metrics["base"]["references"]  # accounting to the end: every test row's reference is counted
    assert refs["rows_in"] == metrics["base"]["items"] == refs["scored"] + refs["answer_truncated_away"]


def test_each_domain_is_evaluated_on_its_own_items(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    # the tweets domain is evaluated on tweet replies only, without probes; stats on its items and every probe
    tweets = json.loads((repo / "metrics/eval/tweets.json").read_text())
    assert tweets["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and tweets["base"]["probes"] == 0
    assert not any("facts" in k or "stackexchange" in k for k in tweets["per_source"]), tweets["per_source"]
    assert metrics["base"]["probes"] > 0


def test_the_judge_sees_each_item_in_both_orders_unless_the_answers_are_identical(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    judge = metrics["judge"]
    assert judge["items"] == metrics["base"]["items"] and judge["judged"] + judge["failed"] == judge["items"]
    # each test item in both orders, but two identical answers are a tie without a call
    judge_calls = run_facts(repo, "evaluate/stats")["oracle"]["calls"]
    assert 0 < judge_calls <= 2 * (judge["items"] - judge["identical"]), (judge_calls, judge)


def test_evaluate_probes_the_full_precision_base_and_times_latency_apart(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    # the probes on the full-precision base too, and latency in its own metric
    numerics = metrics["numerics"]
    assert set(numerics["sides"]) == {"nf4", "nf4+adapter", "full", "full+adapter"} and numerics["probes"] > 0
    assert "## Numerics" in (repo / "reports/eval/stats/eval.md").read_text()
    latency = json.loads((repo / "metrics/runs/latency/stats.json").read_text())
    assert latency["base"]["queries"] == latency["tuned"]["queries"] == 2
    assert 0 < latency["tuned"]["median_s"] <= latency["tuned"]["p95_s"] and latency["tuned"]["tokens_per_s"] > 0
    assert "latency" not in metrics


def test_the_evaluation_report_opens_with_the_verdict(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    report = (repo / "reports/eval/stats/eval.md").read_text()
    assert report.startswith(f"# Evaluation: **{metrics['verdict']}**") and "probe_accuracy" in report
    assert report.splitlines()[4].startswith("Overfitting: **")
    assert "## Test items side by side" in report


def test_the_domains_report_names_every_domain(repo):
    metrics = json.loads((repo / "metrics/eval/stats.json").read_text())
    domains_md = (repo / "reports/domains.md").read_text()
    assert domains_md.startswith("# Domains") and f"**{metrics['verdict']}**" in domains_md
    assert "| stats |" in domains_md and "| tweets |" in domains_md


def test_the_local_oracle_costs_nothing_and_every_call_is_counted(repo):
    # the cost: $0 for the local oracle, every call counted, stage by stage
    cost = json.loads((repo / "metrics/runs/cost.json").read_text())
    assert cost["total"]["usd"] == 0 and cost["total"]["calls"] == sum(
        run_facts(repo, s)["oracle"]["calls"] for s in ("synthesize", "calibrate", "label", "evaluate/stats",
                                                        "evaluate/tweets")) > 0
    assert (repo / "reports/cost.md").read_text().startswith("# Oracle cost")


def test_dvc_plots_show_draws_every_plot_on_a_page_that_needs_no_network(repo):
    for name in ("eval_per_source/stats", "eval_per_source/tweets", "eval_judge/stats", "calibration"):
        assert json.loads((repo / f"metrics/plots/{name}.json").read_text()), name
    # `dvc plots show` draws every plot on one page that needs no network
    try:
        sh("dvc plots show -o plots_page", repo)
        page = (repo / "plots_page/index.html").read_text()
        assert "Judge outcomes" in page and "https://cdn" not in page
    finally:
        shutil.rmtree(repo / "plots_page", ignore_errors=True)


def test_the_student_scorer_is_measured_against_the_oracle(repo):
    split = json.loads((repo / "metrics/split.json").read_text())
    scorer = json.loads((repo / "metrics/scorer.json").read_text())
    assert scorer["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and scorer["n_test"] == split["counts"]["test"]
    assert set(scorer["per_dimension"]) == {"relevance", "correctness", "helpfulness"}
    assert isinstance(scorer["mae"], float) and isinstance(scorer["rmse"], float)
    assert isinstance(scorer["mean_baseline"]["mae"], float) and "self_consistency_mad" in scorer["oracle_noise"]
    assert (repo / "reports/scorer.md").read_text().startswith("# Student scorer against the oracle")


def test_the_student_scorer_scores_the_holdout(repo):
    scorer = json.loads((repo / "metrics/scorer.json").read_text())
    # the cheap stand-in for the oracle scores the split's holdout
    try:
        out = sh("slmforge score data/split/test.jsonl --out scored.jsonl", repo).stdout
        scored = [json.loads(line) for line in (repo / "scored.jsonl").read_text().splitlines()]
        assert len(scored) == scorer["n_test"] and all(s["tier"] for s in scored), out
    finally:
        (repo / "scored.jsonl").unlink(missing_ok=True)


# --- repros after the first ---------------------------------------------------------------------------------------

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


# --- a param change (the `retrained` step: these come last, they change the repository) ----------------------------

def test_conf_edited_without_compose_stops_at_check_params_in_one_line(retrained):
    stale, _ = retrained
    # conf/ edited without `dvc exp run`: the first stage to run refuses with one line
    assert stale.returncode != 0 and ran(stale.stdout) == ["check_params"], stale.stdout
    errors = [line for line in stale.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "params.yaml is stale" in errors[0], stale.stderr
    assert any(key in errors[0] for key in ("lora.r", "train.max_steps", "eval.judge.enabled")), errors[0]


def test_param_change_runs_exactly_train_and_evaluate(retrained):
    _, out = retrained
    # check_params passed in the killed run; train@stats was killed after its checkpoint: train and evaluate of each
    # domain run again (and the reports that read their metrics), and the killed one resumes
    assert set(DOMAIN_STAGES) <= set(ran(out)) <= {*DOMAIN_STAGES, "domains", "cost"}, out


def test_a_killed_train_resumes_from_its_checkpoint(repo, retrained):
    resumed = [run_facts(repo, f"train/{d}") for d in DOMAINS]
    trained = [json.loads((repo / f"metrics/train/{d}/metrics.json").read_text()) for d in DOMAINS]
    assert max(r["resumed_from_step"] for r in resumed) >= 2 and all(t["last_step"] == 10 for t in trained)


def test_the_changed_params_reach_the_adapter_and_the_evaluation(repo, retrained):
    adapter = json.loads((repo / "models/adapters/stats/adapter_config.json").read_text())
    assert adapter["r"] == 8
    evaluation = json.loads((repo / "metrics/eval/stats.json").read_text())
    assert evaluation["judge"] is None and evaluation["stats"]["judge_win_rate"] is None
    assert evaluation["verdict"] in ("DEPLOY", "REVIEW", "FAIL") and "oracle" not in evaluation
