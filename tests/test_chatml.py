"""Cleaned records become chat rows through per-origin templates, with no model involved (the rows are the same
for any `model`); the character-length histogram adds up; what is not converted is counted with its reason."""

import dataclasses

import pytest

from slmforge.chatml import convert
from slmforge.errors import UserError
from slmforge.params import ChatmlParams

TEMPLATES = {"default": {"system": "Be brief.", "user": "{prompt}"},
             "tweets": {"system": "Reply on social media.", "user": "Generate an engaging reply to:\n\n{prompt}"}}
PARAMS = ChatmlParams(kinds=["pair"], templates=TEMPLATES, histogram_bins=[32, 64, 128])


def raw(id_, kind="pair", prompt="Q?", response="A.", text="", origin="stackexchange"):
    return {"id": id_, "source": "sample", "kind": kind, "prompt": prompt, "response": response, "text": text,
            "meta": {"origin": origin, "site": "stats"},
            "provenance": {"query": "q", "url": None, "fetched_at": "t", "run_id": "r"}}


def test_pairs_convert_and_accounting_holds():
    records = [raw("a"), raw("b", kind="document", prompt="", response="", text="doc"), raw("c", response="  ")]
    rows, metrics = convert(records, PARAMS)
    assert [r["id"] for r in rows] == ["a"]
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                                   {"role": "assistant", "content": "A."}]
    assert rows[0]["provenance"]["query"] == "q"
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"] == 3
    assert metrics["skipped_by_reason"] == {"empty_prompt_or_response": 1, "kind_document": 1}


def test_per_origin_template_and_meta_fields():
    params = dataclasses.replace(PARAMS, templates={**TEMPLATES, "stackexchange": {
        "system": "", "user": "[{site}] {prompt}"}})
    rows, _ = convert([raw("t", prompt="Peeking is fine, right?", origin="tweets"), raw("s")], params)
    assert rows[0]["messages"][0] == {"role": "system", "content": "Reply on social media."}
    assert rows[0]["messages"][1]["content"] == "Generate an engaging reply to:\n\nPeeking is fine, right?"
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant"]  # no system prompt: no message
    assert rows[1]["messages"][0]["content"] == "[stats] Q?"


def test_template_naming_a_missing_field_is_a_one_line_error():
    params = dataclasses.replace(PARAMS, templates={"default": {"system": "", "user": "{title}: {prompt}"}})
    with pytest.raises(UserError, match=r"chatml.templates.default.user names \{title\}"):
        convert([raw("a")], params)


def test_char_histogram_counts_every_row():
    records = [raw(str(i), response="word " * (i * 3)) for i in range(1, 12)]
    rows, metrics = convert(records, PARAMS)
    hist = metrics["chars"]["histogram"]
    assert list(hist) == sorted(hist) == ["le_032", "le_064", "le_128", "le_inf"]
    assert sum(hist.values()) == len(rows) == 11
    assert metrics["chars"]["max"] == max(r["meta"]["chars"] for r in rows)
    assert hist["le_inf"] == sum(r["meta"]["chars"] > 128 for r in rows) > 0


def test_long_records_are_kept_whole_for_the_model_to_cut():
    """No tokenizer here: a long answer stays whole, and train/evaluate cut it at their max_seq_len (counted)."""
    long_answer = " ".join(f"Sentence {i} explains the variance of the estimator." for i in range(200))
    rows, metrics = convert([raw("long", response=long_answer)], PARAMS)
    assert rows[0]["messages"][-1]["content"] == long_answer and "truncated" not in metrics


def test_the_stage_stops_in_one_line_when_no_record_becomes_a_chat_row(tmp_path, monkeypatch, root):
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
        main(["--kept", "kept.jsonl", "--synthetic", "pairs.jsonl", "--out", "all.jsonl",
              "--metrics", "m.json"])
    assert str(info.value) == ("chatml: all 2 records were removed (kind_document 2); see chatml.kinds in "
                               "conf/chatml/")
    assert not (tmp_path / "all.jsonl").exists()
