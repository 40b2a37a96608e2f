"""`dvc plots show` and `dvc plots diff` render every plot in dvc.yaml, offline, on data of the stage outputs' shape.

A temporary git + DVC repository gets this repository's `plots:` section, `.dvc/plots/` (templates and the
offline page) and `[plots]` config, and fixture files shaped like what train (dvclive) and evaluate write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import vl_convert as vlc
import yaml
from configobj import ConfigObj

from slmforge.plots import PAGE, offline_page, vegalite_version

ROOT = Path(__file__).resolve().parents[1]
PLOTS = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
# A plot whose id is a folder (the evaluation's: one file per domain) is drawn once per file; the fixtures have the
# default domain `all`. LABEL: each plot on the page -> its title.
LABEL = {(f"{pid}/all.json" if "title" in props else pid): props.get("title", pid)
         for pid, props in (next(iter(p.items())) for p in PLOTS)}
TITLES = list(LABEL)
PER_SOURCE = "metrics/plots/eval_per_source/all.json"
# the mark each plot must draw (the SVG class Vega gives it): a plot that silently draws nothing fails
MARKS = {
    "Loss (train and validation)": "mark-line",
    "Learning rate": "mark-line",
    "Evaluation by source (base vs tuned)": "mark-rect",
    "Judge outcomes (tuned vs base)": "mark-rect",
    "Calibration - oracle score by stratum": "mark-symbol",
    "Calibration - oracle vs human gold": "mark-symbol",
    "Scorer - predicted vs oracle": "mark-symbol",
    "Scorer loss (MSE, train and validation)": "mark-line",
}
NO_GOLD = "no human gold labels among"
EXTERNAL_LOAD = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?\s*|url\(\s*["']?|@import\s+["']?)(?:https?:)?//""", re.I)


def write_fixtures(repo: Path, version: int, gold: bool) -> None:
    """Metrics files of the shape train and evaluate write; `version` shifts the numbers."""
    train = repo / "metrics/train/all/plots/metrics"  # the default domain's
    steps = range(0, 100, 5)
    for folder in (train, repo / "metrics/scorer_train/plots/metrics"):  # the chat adapter's and the scorer's
        for sub in ("train", "eval"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "train/loss.tsv").write_text("step\tloss\n" + "".join(
            f"{s}\t{3.5 / (1 + s / 20) + 0.1 * version}\n" for s in steps))
        (folder / "eval/loss.tsv").write_text("step\tloss\n" + "".join(
            f"{s}\t{3.6 / (1 + s / 30) + 0.1 * version}\n" for s in steps[::4]))
    (train / "learning_rate.tsv").write_text("step\tlearning_rate\n" + "".join(
        f"{s}\t{2e-4 * (1 - s / 100)}\n" for s in steps))

    plots = repo / "metrics/plots"
    plots.mkdir(parents=True, exist_ok=True)
    scales = {"rouge_l": 0.3, "probe_accuracy": 0.5, "judge_win_rate": 0.6, "hallucination_rate": 0.8, "length": 120}
    bars = [{"source": source, "metric": metric, "model": model,
             "value": round(scale * (0.3 + 0.1 * i + (0.2 if model == "tuned" else 0) + 0.05 * version), 4), "n": 10 + i}
            for i, source in enumerate(["sample", "stackexchange", "arxiv"])
            for metric, scale in scales.items() for model in ("base", "tuned")]
    (plots / "eval_per_source").mkdir(exist_ok=True)
    (plots / "eval_per_source/all.json").write_text(json.dumps(bars, indent=1))
    judge = [{"outcome": "tuned wins", "count": 12 + version}, {"outcome": "base wins", "count": 5},
             {"outcome": "tie", "count": 3}, {"outcome": "flips with order", "count": 11 - version}]
    (plots / "eval_judge").mkdir(exist_ok=True)
    (plots / "eval_judge/all.json").write_text(json.dumps(judge, indent=1))
    calibration = []
    for stratum, n, mean in [("on-topic", 12, 7.0), ("off-topic", 12, 1.5), ("edge", 6, 4.0)]:
        for i in range(n):
            overall = round(mean + (i % 5 - 2) * 0.4 + 0.1 * version, 3)
            calibration.append({"id": f"sample:{stratum}:{i}", "stratum": stratum, "overall": overall,
                                "relevance": overall + 0.2, "correctness": overall - 0.1, "helpfulness": overall,
                                "gold_overall": round(overall + 0.5, 1) if gold and i % 2 == 0 else None})
    (plots / "calibration.json").write_text(json.dumps(calibration, indent=1))
    scorer = [{"id": f"t{i}", "dimension": d, "oracle": float(i % 11), "predicted": round(i % 11 * 0.8 + 1 + 0.1 * version, 3)}
              for i in range(20) for d in ("relevance", "correctness", "helpfulness")]
    (plots / "scorer_predictions.json").write_text(json.dumps(scorer, indent=1))


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache")}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Two commits: `no-gold` (no human labels, as the default pipeline has) and `gold` (the workspace, some
    labels), the latter with other numbers, for `dvc plots diff`."""
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    config = ConfigObj(str(repo / ".dvc/config"))
    config["plots"] = dict(ConfigObj(str(ROOT / ".dvc/config"))["plots"])
    config.write()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": PLOTS}, sort_keys=False))
    (repo / ".gitignore").write_text("/dvc_plots/\n/out*/\n")
    write_fixtures(repo, version=0, gold=False)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "no gold")
    git(repo, "tag", "no-gold")
    write_fixtures(repo, version=1, gold=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "gold")
    git(repo, "tag", "gold")
    return repo


def show_json(repo: Path, *args: str) -> dict:
    result = json.loads(dvc(repo, *args, "--json"))
    assert not result.get("errors"), result["errors"]
    return result["data"]


def svg_of(spec: dict) -> str:
    return vlc.vegalite_to_svg(spec, vl_version=vegalite_version())


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_every_plot_definition_renders_without_errors(repo):
    data = show_json(repo, "plots", "show")
    assert list(data) == TITLES
    for title, renderers in data.items():
        assert len(renderers) == 1 and renderers[0]["type"] == "vega", title
        assert renderers[0]["revisions"] == ["workspace"], title
        assert renderers[0]["content"]["data"]["values"], f"{title}: no datapoints"


def test_page_is_offline_and_titles_every_plot(repo, tmp_path):
    dvc(repo, "plots", "show", "-o", str(tmp_path / "page"))
    html = (tmp_path / "page/index.html").read_text(encoding="utf-8")
    assert not EXTERNAL_LOAD.search(html), EXTERNAL_LOAD.search(html).group(0)
    assert not re.search(r"<script[^>]*\bsrc\s*=", html) and "cdn.jsdelivr" not in html
    assert "window.vegaEmbed=" in html, "the page does not carry vega-embed"
    assert html.rsplit("</head>", 1)[1].count("vegaEmbed('#") == len(TITLES)  # the bundle mentions it too
    for title in TITLES:
        assert json.dumps(title) in html, f"{title!r} is not on the page"


def test_every_plot_draws_its_marks_offline(repo):
    data = show_json(repo, "plots", "show")
    for title, renderers in data.items():
        spec = renderers[0]["content"]
        png = vlc.vegalite_to_png(spec, vl_version=vegalite_version())
        width, height = png_size(png)
        assert width >= 300 and height >= 200 and len(png) > 10_000, f"{title}: {width}x{height}, {len(png)} bytes"
        svg = svg_of(spec)
        assert f'class="{MARKS[LABEL[title]]} role-mark' in svg, f"{title}: no {MARKS[LABEL[title]]} drawn"
        assert LABEL[title] in svg


def test_plots_diff_renders_both_revisions(repo, tmp_path):
    data = show_json(repo, "plots", "diff", "no-gold", "gold")
    assert list(data) == TITLES
    for title, renderers in data.items():
        assert renderers[0]["revisions"] == ["no-gold", "gold"], title
        assert {row["rev"] for row in renderers[0]["content"]["data"]["values"]} == {"no-gold", "gold"}, title
        svg = svg_of(renderers[0]["content"])
        assert f'class="{MARKS[LABEL[title]]} role-mark' in svg, title
    # the bars say which revision and model they are; the per-revision panels are headed by the revision;
    # the revision without gold labels says so instead of failing
    assert "no-gold / tuned" in svg_of(data[PER_SOURCE][0]["content"])
    gold = svg_of(data["Calibration - oracle vs human gold"][0]["content"])
    assert ">no-gold<" in gold and ">gold<" in gold and NO_GOLD in gold
    dvc(repo, "plots", "diff", "no-gold", "gold", "-o", str(tmp_path / "page"))
    html = (tmp_path / "page/index.html").read_text(encoding="utf-8")
    assert '"rev": "no-gold"' in html and '"rev": "gold"' in html and not EXTERNAL_LOAD.search(html)


def test_all_null_gold_is_an_empty_plot_that_says_why(repo):
    """The default pipeline has no human labels: the scatter is empty, keeps its legend and says why."""
    spec = show_json(repo, "plots", "diff", "no-gold", "gold")["Calibration - oracle vs human gold"][0]["content"]
    spec["data"]["values"] = [row for row in spec["data"]["values"] if row["rev"] == "no-gold"]
    assert all(row["gold_overall"] is None for row in spec["data"]["values"])
    svg = svg_of(spec)
    assert f"{NO_GOLD} 30 records" in svg and ">on-topic<" in svg and ">gold<" not in svg
    assert len(vlc.vegalite_to_png(spec, vl_version=vegalite_version())) > 5_000


def test_committed_page_is_what_the_locked_vl_convert_makes():
    committed = PAGE.read_text(encoding="utf-8")
    assert committed == offline_page(), "stale .dvc/plots/offline_page.html: run `python -m slmforge.plots`"
    assert len(committed.encode()) < 3_000_000
