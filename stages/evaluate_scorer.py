"""Stage `evaluate_scorer`: the student scorer against the oracle's labels of the val and test splits, with the
oracle's own noise from calibration beside it, and a verdict DEPLOY / REVIEW / FAIL.

Run: dvc repro evaluate_scorer   (python -m stages.evaluate_scorer --test data/split/test.jsonl --scorer models/scorer ...)
"""

import argparse
import json
from pathlib import Path

from slmforge.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, json_safe, read_jsonl
from slmforge.params import check_params_fresh, load_params
from slmforge.runner import run
from slmforge.student_eval import evaluate, mean_baseline, plot_rows, report_markdown
from slmforge.student import load_scorer, predict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", required=True, help="data/split/train.jsonl (the train-mean baseline)")
    ap.add_argument("--val", required=True, help="data/split/val.jsonl")
    ap.add_argument("--test", required=True, help="data/split/test.jsonl")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--calibration", required=True, help="metrics/calibration.json (the oracle's self-consistency)")
    ap.add_argument("--base", required=True)
    ap.add_argument("--pin", required=True)
    ap.add_argument("--scorer", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--scores", required=True, help="the scorer's scores of the test rows")
    ap.add_argument("--plot", required=True)
    args = ap.parse_args(argv)
    check_params_fresh()
    rubric, params = load_params("rubric"), load_params("scorer")
    labels = {lab["id"]: lab for lab in read_jsonl(args.labels)}
    model, tokenizer, card = load_scorer(Path(args.scorer), Path(args.base), Path(args.pin))
    val = predict(model, tokenizer, read_jsonl(args.val), card, params.batch_size, "score val")
    test_rows = read_jsonl(args.test)
    test = predict(model, tokenizer, test_rows, card, params.batch_size, "score test")
    baseline = mean_baseline([r["id"] for r in read_jsonl(args.train)], labels, rubric,
                             [r["id"] for r in test_rows])
    result = evaluate(val, test, labels, rubric, params.verdict, json.loads(Path(args.calibration).read_text()),
                      baseline)
    atomic_write_jsonl(args.scores, test)
    atomic_write_text(args.plot, json.dumps(plot_rows(test, labels, list(rubric.dimensions)), indent=1) + "\n")
    atomic_write_text(args.report, report_markdown(result))
    atomic_write_json(args.metrics, json_safe(result))
    print(f"evaluate_scorer: {result['verdict']}: test MAE {result['mae']:.3f} (train-mean baseline "
          f"{result['mean_baseline']['mae']:.3f}), RMSE {result['rmse']:.3f}, tier accuracy {result['tier_accuracy']:.1%} "
          f"on {result['n_test']} rows -> {args.report}")


if __name__ == "__main__":
    run(main)
