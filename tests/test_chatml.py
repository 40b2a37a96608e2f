"""Cleaned records become chat rows through per-origin templates; over-long ones are truncated or dropped
and counted; the token-length histogram adds up; what is not converted is counted with its reason."""

import dataclasses

import pytest

from slmforge.chatml import convert, n_tokens
from slmforge.io import UserError
from slmforge.params import ChatmlParams

TEMPLATES = {"default": {"system": "Be brief.", "user": "{prompt}"},
             "tweets": {"system": "Reply on social media.", "user": "Generate an engaging reply to:\n\n{prompt}"}}
PARAMS = ChatmlParams(kinds=["pair"], templates=TEMPLATES, max_tokens=1024, overflow="truncate",
                      histogram_bins=[32, 64, 128])


def raw(id_, kind="pair", prompt="Q?", response="A.", text="", origin="stackexchange"):
    return {"id": id_, "source": "sample", "kind": kind, "prompt": prompt, "response": response, "text": text,
            "meta": {"origin": origin, "site": "stats"},
            "provenance": {"query": "q", "url": None, "fetched_at": "t", "run_id": "r"}}


def test_pairs_convert_and_accounting_holds(tokenizer):
    records = [raw("a"), raw("b", kind="document", prompt="", response="", text="doc"), raw("c", response="  ")]
    rows, metrics = convert(records, PARAMS, tokenizer)
    assert [r["id"] for r in rows] == ["a"]
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                                   {"role": "assistant", "content": "A."}]
    assert rows[0]["provenance"]["query"] == "q"
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"] == 3
    assert metrics["skipped_by_reason"] == {"empty_prompt_or_response": 1, "kind_document": 1}


def test_per_origin_template_and_meta_fields(tokenizer):
    params = dataclasses.replace(PARAMS, templates={**TEMPLATES, "stackexchange": {
        "system": "", "user": "[{site}] {prompt}"}})
    rows, _ = convert([raw("t", prompt="Peeking is fine, right?", origin="tweets"), raw("s")], params, tokenizer)
    assert rows[0]["messages"][0] == {"role": "system", "content": "Reply on social media."}
    assert rows[0]["messages"][1]["content"] == "Generate an engaging reply to:\n\nPeeking is fine, right?"
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant"]  # no system prompt: no message
    assert rows[1]["messages"][0]["content"] == "[stats] Q?"


def test_template_naming_a_missing_field_is_a_one_line_error(tokenizer):
    params = dataclasses.replace(PARAMS, templates={"default": {"system": "", "user": "{title}: {prompt}"}})
    with pytest.raises(UserError, match=r"chatml.templates.default.user names \{title\}"):
        convert([raw("a")], params, tokenizer)


def test_over_long_examples_are_truncated_to_fit_or_dropped_and_counted(tokenizer):
    long_answer = " ".join(f"Sentence {i} explains the variance of the estimator." for i in range(60))
    records = [raw("short"), raw("long", response=long_answer)]
    rows, metrics = convert(records, dataclasses.replace(PARAMS, max_tokens=120), tokenizer)
    assert [r["id"] for r in rows] == ["short", "long"] and metrics["truncated"] == 1
    cut = rows[1]
    assert n_tokens(tokenizer, cut["messages"]) <= 120 and cut["meta"]["tokens"] <= 120
    assert cut["meta"]["truncated_from_tokens"] > 120
    assert long_answer.startswith(cut["messages"][-1]["content"]) and len(cut["messages"][-1]["content"]) > 50

    rows, metrics = convert(records, dataclasses.replace(PARAMS, max_tokens=120, overflow="drop"), tokenizer)
    assert [r["id"] for r in rows] == ["short"] and metrics["skipped_by_reason"] == {"over_length": 1}

    huge_prompt = "word " * 400
    rows, metrics = convert([raw("p", prompt=huge_prompt)], dataclasses.replace(PARAMS, max_tokens=120), tokenizer)
    assert rows == [] and metrics["skipped_by_reason"] == {"prompt_over_length": 1}


def test_token_histogram_counts_every_row(tokenizer):
    records = [raw(str(i), response="word " * (i * 10)) for i in range(1, 12)]
    rows, metrics = convert(records, PARAMS, tokenizer)
    hist = metrics["tokens"]["histogram"]
    assert list(hist) == sorted(hist) == ["le_032", "le_064", "le_128", "le_inf"]
    assert sum(hist.values()) == len(rows) == 11
    assert metrics["tokens"]["max"] == max(r["meta"]["tokens"] for r in rows)
    assert hist["le_inf"] == sum(r["meta"]["tokens"] > 128 for r in rows) > 0


def test_the_stage_stops_in_one_line_when_no_record_becomes_a_chat_row(tmp_path, monkeypatch, base_model, root):
    import json
    import shutil

    from stages.chatml import main

    shutil.copytree(root / "conf", tmp_path / "conf")
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    docs = [raw(f"d{k}", kind="document", prompt="", response="", text="A paper.") for k in range(2)]
    (tmp_path / "kept.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "pairs.jsonl").write_text("")  # synthesize made no pair from them
    with pytest.raises(UserError) as info:
        main(["--kept", "kept.jsonl", "--synthetic", "pairs.jsonl", "--base", str(base_model[0]), "--out", "all.jsonl",
              "--metrics", "m.json"])
    assert str(info.value) == ("chatml: all 2 records were removed (kind_document 2); see chatml.kinds, "
                               "chatml.max_tokens and chatml.overflow in conf/chatml/")
    assert not (tmp_path / "all.jsonl").exists()
