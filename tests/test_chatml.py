"""Raw records become chat rows with provenance; what is not converted is counted with its reason."""

from slmforge.chatml import convert
from slmforge.params import ChatmlParams


def raw(id_, kind="pair", prompt="Q?", response="A.", text=""):
    return {"id": id_, "source": "sample", "kind": kind, "prompt": prompt, "response": response, "text": text,
            "meta": {"origin": "stackexchange"}, "provenance": {"query": "q", "url": None, "fetched_at": "t",
                                                                "run_id": "r"}}


def test_pairs_convert_and_accounting_holds():
    params = ChatmlParams(system_prompt="Be brief.", kinds=["pair"])
    records = [raw("a"), raw("b", kind="document", prompt="", response="", text="doc"), raw("c", response="  ")]
    rows, metrics = convert(records, params)
    assert [r["id"] for r in rows] == ["a"]
    assert rows[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                                   {"role": "assistant", "content": "A."}]
    assert rows[0]["provenance"]["query"] == "q"
    assert metrics["records_in"] == metrics["rows_out"] + metrics["skipped"] == 3
    assert metrics["skipped_by_reason"] == {"empty_prompt_or_response": 1, "kind_document": 1}


def test_no_system_prompt_means_no_system_message():
    rows, _ = convert([raw("a")], ChatmlParams(system_prompt="", kinds=["pair"]))
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
