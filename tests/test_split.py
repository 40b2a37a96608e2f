"""The split is deterministic, stratified by source and tier, disjoint, accounts for every row, holds fact
phrasings out as probes, and its leakage gate moves near-duplicates of train rows out of val/test."""

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest

from slmforge.curation.dedup import embed, load_sentence_encoder
from slmforge.errors import UserError
from slmforge.io import read_jsonl
from slmforge.params import SplitParams
from slmforge.split import check_disjoint, score_bin, stratified_split
from tests.conftest import chat_row

PARAMS = SplitParams(salt="s1", fractions={"train": 0.8, "val": 0.1, "test": 0.1}, probe_phrasings_per_fact=1,
                     min_tier_rows=10, score_bins=[2.0, 4.0, 6.0, 8.0], leakage_threshold=0.9,
                     encoder="embedded", encoder_batch_size=64)
OVERALL = {"gold": 8.5, "silver": 6.5, "bronze": 4.5}


def label(id_, tier, overall=None, dropped=False):
    return {"id": id_, "scores": {}, "overall": OVERALL.get(tier) if overall is None else overall, "tier": tier,
            "dropped": dropped, "oracle": {"backend": "test", "model": "test", "prompt_sha": "0"}}


def corpus():
    """Rows and labels: big tiers in stackexchange, a small tier in each origin, dropped rows, a repeated id."""
    rows, labels = [], {}

    def add(row, tier, **kw):
        rows.append(row)
        labels[row["id"]] = label(row["id"], tier, **kw)

    for i in range(190):
        add(chat_row(f"se:{i}", f"question number {i}?", f"answer {i}"),
            "gold" if i < 100 else "silver" if i < 160 else "bronze")
    for i in range(5):  # 5 < min_tier_rows: binned by score (1.5 -> bin_le_2.0, 3.0 -> bin_le_4.0)
        add(chat_row(f"se:r{i}", f"weak question {i}?", "meh"), "reject", overall=1.5 if i < 2 else 3.0)
    for i in range(40):
        add(chat_row(f"tw:{i}", f"tweet {i}?", f"reply {i}", origin="tweets"), "gold")
    for i in range(3):  # silver is big in stackexchange but small in tweets: binned there
        add(chat_row(f"tw:s{i}", f"silver tweet {i}?", "ok", origin="tweets"), "silver", overall=7.0)
    for i in range(6):
        add(chat_row(f"se:junk{i}", f"junk {i}?", "spam"), "junk", overall=0.5, dropped=True)
    add(chat_row("se:dup", "Question number 7?!", "copy"), "gold")  # se:7's question once normalised
    rows.append(chat_row("se:3", "question number 3?", "answer 3"))  # a repeated id
    for f in range(10):
        for p in range(4):
            add(chat_row(f"facts:{f}:{p}", f"fact {f} phrasing {p}?", f"value {f}", origin="facts",
                         fact_id=f"f{f}", answer=f"value {f}"), "gold")
    return rows, labels


def ids(rows):
    return [r["id"] for r in rows]


def side(splits):
    return {r["id"]: name for name, rows in splits.items() for r in rows}


def test_deterministic_and_independent_of_input_order():
    rows, labels = corpus()
    a, ma = stratified_split(rows, labels, PARAMS)
    b, mb = stratified_split(random.Random(1).sample(rows, len(rows)), labels, PARAMS)
    assert {k: ids(v) for k, v in a.items()} == {k: ids(v) for k, v in b.items()}
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
    c, _ = stratified_split(rows, labels, dataclasses.replace(PARAMS, salt="s2"))
    assert ids(c["test"]) != ids(a["test"])


def test_every_row_accounted_for_and_disjoint():
    rows, labels = corpus()
    splits, m = stratified_split(rows, labels, PARAMS)
    assert m["rows_in"] == len(rows) == sum(m["counts"].values()) + m["duplicate_ids"] + m["dropped_by_label"]
    assert m["duplicate_ids"] == 1 and m["dropped_by_label"] == 6 and m["dropped_by_tier"] == {"junk": 6}
    assert not any(i.startswith("se:junk") for i in side(splits))
    assert sorted(side(splits)) == sorted({r["id"] for r in rows} - {f"se:junk{i}" for i in range(6)})
    check_disjoint(splits)


def test_each_big_tier_gets_its_share_in_each_split():
    _, m = stratified_split(*corpus(), PARAMS)
    for stratum, n in [("stackexchange/silver", 60), ("stackexchange/bronze", 30), ("tweets/gold", 40)]:
        s = m["strata"][stratum]
        assert not s["binned"] and (s["train"], s["val"], s["test"]) == (0.8 * n, 0.1 * n, 0.1 * n), stratum
    gold = m["strata"]["stackexchange/gold"]  # 101 rows in 100 groups: se:dup rides with se:7
    assert gold["groups"] == 100 and gold["rows"] == 101 and gold["val"] in (10, 11) and gold["test"] in (10, 11)
    assert m["by_tier"]["val"]["bronze"] == 3  # silver in test: 6 from stackexchange, plus tweets' binned ones
    assert m["by_tier"]["test"]["silver"] == 6 + m["strata"]["tweets/bin_le_8.0"]["test"]


def test_small_tier_falls_back_to_score_bins():
    assert [score_bin(x, PARAMS.score_bins) for x in (0.0, 2.0, 2.1, 8.0, 8.5)] == [
        "bin_le_2.0", "bin_le_2.0", "bin_le_4.0", "bin_le_8.0", "bin_gt_8.0"]
    _, m = stratified_split(*corpus(), PARAMS)
    assert "stackexchange/reject" not in m["strata"] and "tweets/silver" not in m["strata"]
    assert m["strata"]["stackexchange/bin_le_2.0"]["rows"] == 2 and m["strata"]["stackexchange/bin_le_4.0"]["rows"] == 3
    assert m["strata"]["tweets/bin_le_8.0"] == {"binned": True, "groups": 3, "rows": 3, "train": 2, "val": 0,
                                                "test": 1}


def test_exact_duplicate_questions_stay_on_one_side():
    where = side(stratified_split(*corpus(), PARAMS)[0])
    assert where["se:dup"] == where["se:7"]


def test_fact_probes_are_held_out_of_training():
    splits, m = stratified_split(*corpus(), PARAMS)
    probes = splits["probes"]
    assert m["facts"] == 10 and len(probes) == 10
    assert {r["meta"]["fact_id"] for r in probes} == {f"f{i}" for i in range(10)}
    train_ids = set(ids(splits["train"]))
    assert not train_ids & set(ids(probes))
    for f in range(10):  # every fact is still learnable from its other phrasings
        assert sum(1 for i in train_ids if i.startswith(f"facts:{f}:")) == 3
    assert not any(r["meta"]["origin"] == "facts" for r in splits["val"] + splits["test"])


def test_missing_label_is_one_line_error_and_bad_fractions_refused():
    rows, labels = corpus()
    del labels["tw:5"]
    with pytest.raises(UserError, match="'tw:5' has no label.*label") as err:
        stratified_split(rows, labels, PARAMS)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="fractions"):
        stratified_split(*corpus(), dataclasses.replace(PARAMS, fractions={"train": 0.9, "val": 0.2, "test": 0.1}))


def test_check_disjoint_refuses_a_shared_question():
    with pytest.raises(UserError, match="split leakage"):
        check_disjoint({"train": [chat_row("x", "q?", "a")], "test": [chat_row("y", "Q?", "b")]})


def test_test_fingerprint_is_stable_and_tracks_the_test_rows():
    rows, labels = corpus()
    splits, m = stratified_split(rows, labels, PARAMS)
    assert stratified_split(*corpus(), PARAMS)[1]["test_fingerprint"] == m["test_fingerprint"]
    test_id, train_id = splits["test"][0]["id"], splits["train"][0]["id"]
    for changed_id, same in ((train_id, True), (test_id, False)):
        edited = [dict(r, messages=[*r["messages"][:2], {"role": "assistant", "content": "edited"}])
                  if r["id"] == changed_id else r for r in rows]
        assert (stratified_split(edited, labels, PARAMS)[1]["test_fingerprint"] == m["test_fingerprint"]) is same


# Unrelated questions, each with a variant one word away: a paraphrase (MiniLM cosine about 0.93 to 0.98) or a
# different question (about 0.68 to 0.83) that must not count as leakage.
PARAPHRASE = {
    "How do I bake sourdough bread at home?": "How do I make sourdough bread at home?",
    "Why is the sky blue during the day?": "Why is the sky blue during the afternoon?",
    "What causes inflation in a national economy?": "What drives inflation in a national economy?",
    "How can I lower my electricity bill in winter?": "How can I reduce my electricity bill in winter?",
    "Who painted the ceiling of the Sistine Chapel?": "Who decorated the ceiling of the Sistine Chapel?",
    "Is a Bonferroni correction too conservative for ten metrics?":
        "Is a Bonferroni correction too strict for ten metrics?",
    "How do I stop my basil plant from wilting?": "How do I keep my basil plant from wilting?",
    "How is a mortgage interest rate calculated?": "How is a mortgage interest rate determined?",
    "What triggers a volcanic eruption?": "What causes a volcanic eruption?",
    "How much water should a marathon runner drink on race day?":
        "How much water should a marathon runner drink on race morning?",
    "How do I remove red wine stains from a carpet?": "How do I get red wine stains out of a carpet?",
    "Which chess opening suits an aggressive beginner?": "Which chess opening suits an aggressive novice?",
}
DIFFERENT = {
    "What is the capital city of Australia?": "What is the capital city of Austria?",
    "Which vaccines does a puppy need in its first year?": "Which vaccines does a kitten need in its first year?",
    "How many moons does Jupiter have?": "How many moons does Saturn have?",
    "How do I reverse a linked list in C?": "How do I reverse a linked list in Rust?",
    "What temperature should a medium-rare steak reach?": "What temperature should a medium-rare lamb chop reach?",
    "How do I write a cover letter for a nursing job?": "How do I write a cover letter for a teaching job?",
    "What is the difference between a virus and a bacterium?": "What is the difference between a virus and a fungus?",
    "What makes a good password manager?": "What makes a good password generator?",
}
GATE_PARAMS = dataclasses.replace(PARAMS, fractions={"train": 0.6, "val": 0.2, "test": 0.2})


def question_corpus():
    rows = [chat_row(f"q:{i:02d}", q, f"answer {i}") for i, q in enumerate([*PARAPHRASE, *DIFFERENT])]
    return rows, {r["id"]: label(r["id"], "gold") for r in rows}


@pytest.fixture(scope="module")
def minilm():
    encoder = load_sentence_encoder("embedded", 256, "auto", "split.encoder")
    return lambda texts: embed(texts, encoder, 64)


def question(row):
    return row["messages"][1]["content"]


def planted_corpus():
    """question_corpus with two train rows rewritten (ids kept, so nothing else moves): one into a paraphrase
    of a test row, one into the different question one word away from a held-out row."""
    rows, labels = question_corpus()
    base, _ = stratified_split(rows, labels, GATE_PARAMS)
    leaked = next(r for r in base["test"] if question(r) in PARAPHRASE)
    near_miss = next(r for r in base["val"] + base["test"] if question(r) in DIFFERENT)
    into_paraphrase, into_different = base["train"][:2]
    for row in rows:
        if row["id"] == into_paraphrase["id"]:
            row["messages"][1]["content"] = PARAPHRASE[question(leaked)]
        if row["id"] == into_different["id"]:
            row["messages"][1]["content"] = DIFFERENT[question(near_miss)]
    return rows, labels, leaked, near_miss


def test_leakage_gate_moves_a_paraphrase_of_a_train_row_and_nothing_else(minilm):
    rows, labels, leaked, near_miss = planted_corpus()
    vectors = minilm([question(leaked), PARAPHRASE[question(leaked)],
                      question(near_miss), DIFFERENT[question(near_miss)]])
    assert vectors[0] @ vectors[1] >= 0.92 and vectors[2] @ vectors[3] < 0.86  # the premise, with a margin
    exact, m_exact = stratified_split(rows, labels, GATE_PARAMS)
    assert m_exact["leakage"]["gate"] == "exact_only" and m_exact["leakage"]["moved_test"] == 0
    assert side(exact)[leaked["id"]] == "test"
    gated, m = stratified_split(rows, labels, GATE_PARAMS, embed=minilm)
    leak = m["leakage"]
    assert leak["gate"] == "semantic" and (leak["moved_test"], leak["moved_val"]) == (1, 0)
    assert leak["moved_ids"] == [leaked["id"]] and leak["max_cosine_test_train"] < 0.9
    want = {**side(exact), leaked["id"]: "train"}  # every other row, the near miss included, stays put
    assert side(gated) == want and side(gated)[near_miss["id"]] in ("val", "test")
    check_disjoint(gated)
    shuffled, m2 = stratified_split(random.Random(3).sample(rows, len(rows)), labels, GATE_PARAMS, embed=minilm)
    assert side(shuffled) == side(gated) and m2 == m


def test_leakage_gate_follows_chains_and_moves_whole_duplicate_groups():
    """A held-out row near a row that was just moved to train is leaked too; its exact duplicates go with it."""
    rows, labels = question_corpus()
    base, _ = stratified_split(rows, labels, GATE_PARAMS)
    x, a, b = question(base["train"][0]), question(base["test"][0]), question(base["val"][0])
    dup = chat_row("q:zz", b.upper(), "same question as b, shouted")  # joins b's group
    labels["q:zz"] = label("q:zz", "gold")
    # x -- 0.95 -- a -- 0.95 -- b, while x and b are 0.81 apart: only the chain reaches b.
    angle = {x: 0.0, a: 0.32, b: 0.64}

    def fake_embed(texts):
        out = np.zeros((len(texts), len(texts) + 2), dtype=np.float32)
        for i, t in enumerate(texts):
            if t in angle:
                out[i, :2] = np.cos(angle[t]), np.sin(angle[t])
            else:
                out[i, i + 2] = 1.0
        return out

    splits, m = stratified_split(rows + [dup], labels, GATE_PARAMS, embed=fake_embed)
    where = side(splits)
    assert where[base["test"][0]["id"]] == where[base["val"][0]["id"]] == where["q:zz"] == "train"
    assert (m["leakage"]["moved_test"], m["leakage"]["moved_val"]) == (1, 2)


def out_args(folder: str) -> list[str]:
    """The stage's four output files, named as dvc.yaml names them (in `folder`)."""
    return [arg for name in ("train", "val", "test", "probes") for arg in (f"--{name}", f"{folder}/{name}.jsonl")]


def test_stage_writes_splits_and_metrics(tmp_path, monkeypatch, root, capsys):
    from stages.split import main

    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    rows, labels, leaked, _ = planted_corpus()
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(v) + "\n" for v in labels.values()))
    main(["--chatml", "all.jsonl", "--labels", "labels.jsonl", *out_args("out"), "--metrics", "m/split.json"])
    metrics = json.loads((tmp_path / "m" / "split.json").read_text())
    written = {name: read_jsonl(tmp_path / "out" / f"{name}.jsonl") for name in ("train", "val", "test", "probes")}
    assert {k: len(v) for k, v in written.items()} == metrics["counts"]
    assert sum(metrics["counts"].values()) == len(rows) and metrics["leakage"]["gate"] == "semantic"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind
    assert capsys.readouterr().out.count("\n") == 1


def test_the_stage_stops_in_one_line_when_every_row_is_in_a_dropped_tier(tmp_path, monkeypatch, root):
    from stages.split import main

    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    rows = [chat_row(f"r{k}", f"question {k}?", "answer") for k in range(4)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(label(r["id"], "reject", dropped=True)) + "\n"
                                                   for r in rows))
    with pytest.raises(UserError) as info:
        main(["--chatml", "all.jsonl", "--labels", "labels.jsonl", *out_args("out"), "--metrics", "m.json"])
    assert str(info.value) == ("split: all 4 records were removed (tier reject (label.drop_tiers) 4); nothing is left "
                               "to train on: empty label.drop_tiers, or look at metrics/label.json")
    assert not (tmp_path / "out").exists()
