"""Every param is checked before any stage does work: keys and types of every section, ranges and orderings,
a bad override or option of `slmforge compose` in one line naming the key and what it may be, and compose's
overrides accepted by `dvc repro`'s stages."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from slmforge.cli import main as cli
from slmforge.evaluation.compare import PAIRED
from slmforge.errors import UserError
from slmforge.params import check_params_fresh, compose, composed_overrides
from slmforge.validation import VERDICT_METRICS, validate
from tests.stage_project import error_lines, make_project, run_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group", ["model", "lora", "train", "eval", "scorer", "oracle", "split", "chatml",
                                   "sources"])
def test_every_option_in_conf_is_valid(group):
    for option in sorted((ROOT / "conf" / group).glob("*.yaml")):
        choice = f"[{option.stem}]" if group == "sources" else option.stem
        validate(compose(ROOT / "conf", [f"{group}={choice}"]))


@pytest.fixture(scope="module")
def composed() -> dict:
    return compose(ROOT / "conf")


def with_value(data: dict, key: str, value) -> dict:
    """`data` with one dotted key set, as a -S override would leave params.yaml (a `+` key is added)."""
    out = copy.deepcopy(data)
    *path, leaf = key.split(".")
    node = out
    for part in path:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


@pytest.mark.parametrize("key, value, says", [
    ("lora.r", "abc", "lora.r: expected an integer, got 'abc'"),
    ("lora.r", 0, "lora.r is 0; it must be an integer >= 1"),
    ("train.lr", -1, "train.lr is -1; it must be a number > 0"),
    ("train.lr", 0, "train.lr is 0; it must be a number > 0"),
    ("scorer.lr", -0.001, "scorer.lr is -0.001; it must be a number > 0"),
    ("train.warmup_ratio", 1.5, "train.warmup_ratio is 1.5; it must be a number in [0, 1]"),
    ("clean.language.min_prob", 2, "clean.language.min_prob is 2; it must be a number in [0, 1]"),
    ("split.fractions.test", 1.1, "split.fractions.test is 1.1; it must be a number in [0, 1]"),
    ("split.fractions.train", 0.5, "split.fractions must be train, val and test summing to 1"),
    ("clean.rules.min_chars", 9000, "clean.rules.min_chars (9000) is above clean.rules.max_chars (8000)"),
    ("calibration.thresholds.pass_fn_max", 0.5,
     "calibration.thresholds.pass_fn_max (0.5) is above calibration.thresholds.fail_fn_min (0.3)"),
    ("scorer.verdict.deploy_mae", 2, "scorer.verdict.deploy_mae (2) is above scorer.verdict.fail_mae (1.2)"),
    ("oracle.backend", "gpt", "oracle.backend is 'gpt'; it must be one of claude, local"),
    ("oracle.max_failure_share", 1.5, "oracle.max_failure_share is 1.5; it must be a number in [0, 1]"),
    ("eval.verdict.metric", "bleu", "eval.verdict.metric is 'bleu'; it must be one of rouge_l, nll"),
    ("eval.verdict.on_overfit", "ignore", "eval.verdict.on_overfit is 'ignore'; it must be one of report, review, fail"),
    ("label.drop_tiers", ["platinum"], "label.drop_tiers names 'platinum'; tiers are gold, silver, bronze, reject"),
    ("clean.rules.spam_patterns", ["(unclosed"], "clean.rules.spam_patterns.0 is '(unclosed'"),
    ("lora.rank", 4, "unknown key lora.rank (known: r, alpha, dropout, target_modules)"),
    ("extra", 1, "unknown section `extra`"),
    ("clean.sources", ["files"], "clean.sources is ['files'] but the configured sources are ['sample']"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_it_may_be(composed, key, value, says):
    with pytest.raises(UserError) as info:
        validate(with_value(composed, key, value))
    message = str(info.value)
    assert says in message and "\n" not in message, message


def test_an_override_reaches_validation_as_written(composed):
    """The same check on a value that came through Hydra's override parser (a -S value is a string until parsed)."""
    with pytest.raises(UserError, match="train.lr is -1; it must be a number > 0"):
        validate(compose(ROOT / "conf", ["train.lr=-1"]))
    validate(compose(ROOT / "conf", ["train.lr=1e-3", "lora.r=8"]))


@pytest.mark.parametrize("override, says", [
    ("lora.foo=1", "unknown key lora.foo: no `foo` under `lora` in conf/ (to add a new key on purpose, write "
                   "+lora.foo=...)"),
    ("model=nope", "model=nope: no such option; conf/model/ has: gemma2_2b, llama32_1b, llama32_3b, mistral_nemo_12b, "
                  "qwen25_1_5b, qwen3_8b, smollm2_135m"),
    ("sources=[nope]", "sources=nope: no such option; conf/sources/ has: apify, arxiv, files, hf, sample, stackexchange"),
    ("sources=[]", "no source configured"),
    ("train.lr=-1", "error: conf/ with train.lr=-1: train.lr is -1; it must be a number > 0"),
    ("lora.r", "cannot compose conf/ with lora.r"),
])
def test_slmforge_compose_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, override, says):
    out = tmp_path / "params.yaml"
    with pytest.raises(SystemExit) as exit_info:
        cli(["compose", "--conf", str(ROOT / "conf"), "--out", str(out), override])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]
    assert not out.exists()


def test_compose_with_overrides_is_fresh_for_every_stage(tmp_path, monkeypatch):
    """`slmforge compose lora.r=8 && dvc repro`: the overrides are on params.yaml's first line, so the stages
    compare the file with conf/ composed the same way (it was refused as stale by every stage)."""
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    params = tmp_path / "params.yaml"
    cli(["compose", "--conf", str(tmp_path / "conf"), "--out", str(params), "lora.r=8", "sources=[sample,files]"])
    assert params.read_text().splitlines()[0] == "# slmforge compose lora.r=8 'sources=[sample,files]'"
    assert composed_overrides(params) == ["lora.r=8", "sources=[sample,files]"]
    data = yaml.safe_load(params.read_text())
    assert data["lora"]["r"] == 8 and data["clean"]["sources"] == ["sample", "files"]
    check_params_fresh(params, tmp_path / "conf")  # fresh: no error
    lora = tmp_path / "conf" / "lora" / "r16.yaml"
    lora.write_text(lora.read_text().replace("alpha: 32", "alpha: 64"))  # an edit of conf/ after the compose ...
    with pytest.raises(UserError, match=r"params.yaml is stale \(lora.alpha: params.yaml has 32, conf/ gives 64 "
                                        r"with lora.r=8 sources=\[sample,files\]\)"):
        check_params_fresh(params, tmp_path / "conf")  # ... is still caught
    cli(["compose", "--conf", str(tmp_path / "conf"), "--out", str(params)])  # back to conf/ alone
    assert not params.read_text().startswith("#") and composed_overrides(params) == []


def test_a_typo_in_a_conf_file_stops_check_params_in_one_line(tmp_path):
    project = make_project(tmp_path)
    lora = project / "conf" / "lora" / "r16.yaml"
    lora.write_text(lora.read_text() + "dropuot: 0.1\n")
    (project / "params.yaml").write_text(yaml.safe_dump(compose(project / "conf"), sort_keys=False))
    proc = run_stage(project, "check_params", "--out", "check.json")
    assert proc.returncode == 1, proc.stderr
    assert error_lines(proc) == ["error: params.yaml: unknown key lora.dropuot (known: r, alpha, dropout, "
                                 "target_modules)"]


def test_a_bad_exp_run_override_stops_the_first_stage_before_it_does_any_work(tmp_path):
    """`dvc exp run -S train.lr=-1` composes params.yaml itself and sets DVC_EXP_NAME: the freshness check is
    skipped, the values are still checked, so even collect (which never reads `train`) stops at once."""
    project = make_project(tmp_path)
    data = yaml.safe_load((project / "params.yaml").read_text())
    data["train"]["lr"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    proc = run_stage(project, "collect", "--source", "sample", "--out", "raw.jsonl", "--quarantine", "q.jsonl",
                     "--metrics", "m.json", "--run-facts", "r.json", DVC_EXP_NAME="exp-1")
    assert proc.returncode == 1 and error_lines(proc) == ["error: params.yaml: train.lr is -1; it must be a number > 0"]
    assert not (project / "raw.jsonl").exists()


def test_the_verdict_metrics_are_the_ones_evaluation_can_decide_on():
    assert set(VERDICT_METRICS) == set(PAIRED)
