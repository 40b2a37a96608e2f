"""The split is deterministic, stratified, disjoint, leak-free, and holds fact phrasings out as probes."""

import pytest

from slmforge.io import UserError
from slmforge.params import SplitParams
from slmforge.split import check_disjoint, stratified_split
from tests.conftest import chat_row

PARAMS = SplitParams(salt="s1", fractions={"train": 0.8, "val": 0.1, "test": 0.1}, probe_phrasings_per_fact=1)


def corpus():
    rows = [chat_row(f"se:{i}", f"question number {i}?", f"answer {i}") for i in range(200)]
    rows += [chat_row(f"tw:{i}", f"tweet {i}?", f"reply {i}", origin="tweets") for i in range(50)]
    rows += [chat_row("se:dup", "Question number 7?!", "copy")]  # same question as se:7 once normalised
    for f in range(10):
        rows += [chat_row(f"facts:{f}:{p}", f"fact {f} phrasing {p}?", f"value {f}", origin="facts",
                          fact_id=f"f{f}", answer=f"value {f}") for p in range(4)]
    return rows


def ids(rows):
    return [r["id"] for r in rows]


def test_deterministic_and_independent_of_input_order():
    a, _ = stratified_split(corpus(), PARAMS)
    b, _ = stratified_split(list(reversed(corpus())), PARAMS)
    assert {k: ids(v) for k, v in a.items()} == {k: ids(v) for k, v in b.items()}
    c, _ = stratified_split(corpus(), SplitParams(**{**PARAMS.__dict__, "salt": "s2"}))
    assert ids(c["test"]) != ids(a["test"])


def test_stratified_fractions_and_nothing_lost():
    splits, metrics = stratified_split(corpus(), PARAMS)
    assert sum(metrics["counts"].values()) == len(corpus())
    for origin, n in [("stackexchange", 200), ("tweets", 50)]:
        share = metrics["by_origin"]["test"][origin] / n
        assert 0.08 <= share <= 0.12, (origin, share)
    check_disjoint(splits)


def test_exact_duplicate_questions_stay_on_one_side():
    splits, _ = stratified_split(corpus(), PARAMS)
    side = {r["id"]: name for name, rows in splits.items() for r in rows}
    assert side["se:dup"] == side["se:7"]


def test_fact_probes_are_held_out_of_training():
    splits, _ = stratified_split(corpus(), PARAMS)
    probes = splits["probes"]
    assert len(probes) == 10 and {r["meta"]["fact_id"] for r in probes} == {f"f{i}" for i in range(10)}
    train_ids = set(ids(splits["train"]))
    assert not train_ids & set(ids(probes))
    for f in range(10):  # every fact is still learnable from its other phrasings
        assert sum(1 for i in train_ids if i.startswith(f"facts:{f}:")) == 3
    assert not any(r["meta"]["origin"] == "facts" for r in splits["val"] + splits["test"])


def test_leakage_is_refused():
    row = chat_row("x", "q?", "a")
    with pytest.raises(UserError, match="split leakage"):
        check_disjoint({"train": [row], "test": [chat_row("y", "Q?", "b")]})
    with pytest.raises(UserError, match="fractions"):
        stratified_split(corpus(), SplitParams(salt="s", fractions={"train": 0.9, "val": 0.2, "test": 0.1},
                                               probe_phrasings_per_fact=1))
