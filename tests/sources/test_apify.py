"""The Apify collector against a loopback server that answers the Apify API v2 endpoints apify-client calls."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.params import ApifySourceParams, build
from slmforge.sources import COLLECTORS, apify
from tests.sources.loopback import Loopback, json_response

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fake-token-" + secrets.token_hex(8)  # made per run, so no credential-like literal sits in the repo
ACTOR = "apidojo/tweet-scraper"
RUN_ID = "Hq2CjbRh2y4DZcTE1"
DATASET_ID = "wEZmtHyyYgxq9pB4r"
PARENTS_RUN, PARENTS_DATASET = "Pq7LmRrk2x9GvB4u1", "pR3ntsDataset0001"
T0 = datetime(2023, 11, 24, 17, 49, 36, tzinfo=timezone.utc)
FAST = timedelta(milliseconds=5)  # retry back-off for tests


def created(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%a %b %d %H:%M:%S %z %Y")


def tweet(tid: str, text: str = "How many users do I need for an A/B test on a 2% conversion rate?", **kw) -> dict:
    """An item in the shape apidojo/tweet-scraper writes to its dataset."""
    item = {
        "type": "tweet", "id": tid, "url": f"https://x.com/asker/status/{tid}", "text": text, "lang": "en",
        "createdAt": created(0), "likeCount": 12, "replyCount": 3, "retweetCount": 1, "isReply": False,
        "conversationId": tid,
        "author": {"type": "user", "userName": "asker", "name": "Asker", "followers": 800, "isVerified": False},
        "entities": {"hashtags": [{"text": "abtesting", "indices": [0, 10]}], "urls": [], "user_mentions": []},
    }
    item.update(kw)
    return item


def reply(rid: str, parent: str, *, likes: int = 20, followers: int = 2000, minutes: float = 30,
          text: str = "@asker Roughly 15k per arm for a 10% relative lift at 80% power; use a power calculator.",
          **kw) -> dict:
    item = tweet(rid, text, likeCount=likes, createdAt=created(minutes), isReply=True, inReplyToId=parent,
                 conversationId=parent, url=f"https://x.com/answerer/status/{rid}",
                 author={"type": "user", "userName": "answerer", "name": "Answerer", "followers": followers,
                         "isVerified": True},
                 entities={"hashtags": [], "urls": [], "user_mentions": [{"screen_name": "asker"}]})
    item.update(kw)
    return item


def run_object(status: str, run_id: str = RUN_ID, dataset_id: str = DATASET_ID) -> dict:
    """A run as GET /v2/actor-runs/{id} returns it (the fields apify-client's Run model requires)."""
    return {
        "id": run_id, "actId": "61RPP7dywgiy0JPD0", "userId": "u1", "startedAt": "2026-11-22T10:00:00.000Z",
        "finishedAt": None if status == "RUNNING" else "2026-11-22T10:03:00.000Z", "status": status,
        "statusMessage": "Finished!" if status == "SUCCEEDED" else None,
        "meta": {"origin": "API"}, "stats": {"inputBodyLen": 120, "restartCount": 0},
        "options": {"build": "latest", "timeoutSecs": 900, "memoryMbytes": 1024, "diskMbytes": 2048},
        "buildId": "b1", "defaultKeyValueStoreId": "kv1", "defaultDatasetId": dataset_id,
        "defaultRequestQueueId": "rq1",
    }


class FakeApify:
    """Serves one actor and one dataset the way api.apify.com does; `item_failures` are statuses the items
    endpoint answers first (429, 500) before it serves pages."""

    def __init__(self, lb: Loopback, items: list, *, final_status: str = "SUCCEEDED", item_failures=(),
                 parents: list | None = None):
        """`parents`: the dataset of a second run (the fetch of missing parents); the first run is the search."""
        self.items, self.item_failures = items, list(item_failures)
        runs = [json_response({"data": run_object("RUNNING")}, 201)]
        if parents is not None:
            runs.append(json_response({"data": run_object("RUNNING", PARENTS_RUN, PARENTS_DATASET)}, 201))
            lb.route("GET", f"/v2/actor-runs/{PARENTS_RUN}",
                     json_response({"data": run_object("SUCCEEDED", PARENTS_RUN, PARENTS_DATASET)}))
            lb.handle("GET", f"/v2/datasets/{PARENTS_DATASET}/items", lambda req: self.items_page(req, parents))
        lb.route("POST", "/v2/actors/apidojo~tweet-scraper/runs", *runs)
        lb.route("GET", f"/v2/actor-runs/{RUN_ID}", json_response({"data": run_object(final_status)}))
        lb.handle("GET", f"/v2/datasets/{DATASET_ID}/items", self.items_page)

    def items_page(self, req, items=None):
        items = self.items if items is None else items
        if self.item_failures:
            status = self.item_failures.pop(0)
            kind = "rate-limit-exceeded" if status == 429 else "internal-server-error"
            return json_response({"error": {"type": kind, "message": f"status {status}"}}, status)
        offset = int(req["query"].get("offset", ["0"])[0])
        limit = int(req["query"].get("limit", ["0"])[0]) or len(items)
        page = items[offset:offset + limit]
        return json_response(page, headers={
            "X-Apify-Pagination-Total": str(len(items)), "X-Apify-Pagination-Offset": str(offset),
            "X-Apify-Pagination-Count": str(len(page)), "X-Apify-Pagination-Limit": str(limit),
            "X-Apify-Pagination-Desc": "false"})


@pytest.fixture
def lb():
    with Loopback() as server:
        yield server


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("APIFY_TOKEN", TOKEN)


def make_params(lb: Loopback, **changes) -> ApifySourceParams:
    """The defaults of conf/sources/apify.yaml, pointed at the loopback server."""
    conf = yaml.safe_load((ROOT / "conf/sources/apify.yaml").read_text())
    params = build(ApifySourceParams, conf, "sources.apify")
    return dataclasses.replace(params, **{"api_url": lb.url, **changes})


def collect(params, **kw):
    quarantine, stats = [], {}
    records = apify.collect(params, run_id="run-7", quarantine=quarantine, stats=stats,
                            retry_delay=FAST, **kw)
    return records, quarantine, stats


def test_registered_as_a_collector():
    assert COLLECTORS["apify"] is apify.collect


def no_fetch(lb: Loopback, **changes) -> ApifySourceParams:
    params = make_params(lb, **changes)
    return dataclasses.replace(params, parents=dataclasses.replace(params.parents, fetch="none"))


def test_actor_run_pairs_replies_with_their_tweets(lb):
    items = [reply("r1", "t1"),  # before its parent: it waits for it
             tweet("t1"), tweet("t2", "Is a p-value of 0.06 'almost significant'?"),
             reply("r2", "t2", text="@asker No. Treat 0.06 as weak evidence &amp; report the interval, not a verdict."),
             reply("r3", "t-not-in-dataset"), {"noResults": True}]
    FakeApify(lb, items)
    records, quarantine, stats = collect(no_fetch(lb))

    assert [r["id"] for r in records] == ["apify:tweets:r1", "apify:tweets:r2"]
    r2 = records[1]
    assert r2["prompt"] == "Is a p-value of 0.06 'almost significant'?"
    assert r2["response"] == "No. Treat 0.06 as weak evidence & report the interval, not a verdict."
    assert r2["source"] == "apify" and r2["kind"] == "pair" and r2["meta"]["tweet_id"] == "t2"
    prov = r2["provenance"]
    assert prov["url"] == "https://x.com/answerer/status/r2" and prov["run_id"] == "run-7" and prov["fetched_at"]
    assert ACTOR in prov["query"] and '"A/B test" filter:replies' in prov["query"]
    assert quarantine == []
    assert stats["items"] == 6 and stats["pairs"] == 2 and stats["kept"] == 2
    assert stats["unpaired_replies"] == 1 and stats["no_results"] == 1
    assert stats["actor_run_id"] == RUN_ID and stats["dataset_id"] == DATASET_ID

    # What the client sent: the actor's input, a platform-side timeout, a wait on the run, the token as a header.
    (start,) = lb.calls("POST", "/v2/actors/apidojo~tweet-scraper/runs")
    body = gzip.decompress(start["body"]) if start["headers"].get("Content-Encoding") == "gzip" else start["body"]
    assert json.loads(body) == make_params(lb).run_input and stats["parents_fetch"] == "off"
    assert start["query"]["timeout"] == ["900"]
    assert {k.lower(): v for k, v in start["headers"].items()}["authorization"] == f"Bearer {TOKEN}"
    assert "waitForFinish" in lb.calls("GET", f"/v2/actor-runs/{RUN_ID}")[0]["query"]
    assert lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items")[0]["query"]["clean"] == ["true"]


def test_existing_dataset_is_read_without_running_the_actor(lb):
    # The sample corpus stores pairs already shaped {"tweet", "reply"}; a dataset of them passes through as is.
    sample = [json.loads(line) for line in (ROOT / "data/sample/tweets.jsonl").read_text().splitlines() if line.strip()]
    FakeApify(lb, sample)
    records, quarantine, stats = collect(make_params(lb, actor=None, dataset_id=DATASET_ID, max_records=0))

    assert lb.calls("POST") == [] and lb.calls("GET", f"/v2/actor-runs/{RUN_ID}") == []
    assert stats["dataset_id"] == DATASET_ID and "actor_run_id" not in stats
    assert stats["pairs"] == len(sample) and len(records) + len(quarantine) == len(sample)
    assert len(records) > 0 and all(q["reason"].startswith("seed filter: ") for q in quarantine)
    assert records[0]["provenance"]["query"] == f"apify dataset {DATASET_ID}"
    kept = {r["id"] for r in records}
    assert "apify:tweets:1676859866031948422" in kept  # 71 likes, 13k followers, 7 h later, no link
    assert "apify:tweets:1704899254549812935" not in kept  # its author has 142k followers (max 100k)


SEVENTY_CHARS = "Use a sequential test if you must peek; fixed horizons break otherwise."


@pytest.mark.parametrize("name, dropped, kept", [
    ("reply_likes", {"likes": 4}, {"likes": 5}),
    ("reply_likes", {"likes": 1001}, {"likes": 1000}),
    ("author_followers", {"followers": 499}, {"followers": 500}),
    ("author_followers", {"followers": 100001}, {"followers": 100000}),
    ("reply_delay_minutes", {"minutes": 4}, {"minutes": 6}),
    ("reply_delay_minutes", {"minutes": 4.9}, {"minutes": 5}),
    ("reply_delay_minutes", {"minutes": 1441}, {"minutes": 1440}),
    ("reply_delay_minutes", {"minutes": -10}, {"minutes": 60}),
    ("no_media", {"extendedEntities": {"media": [{"type": "photo", "media_url_https": "https://pbs.twimg.com/a.jpg"}]}},
     {"extendedEntities": {}}),
    ("no_media", {"media": ["https://pbs.twimg.com/a.jpg"]}, {"media": []}),
    ("no_url", {"entities": {"urls": [{"url": "https://t.co/x", "expanded_url": "https://calc.example"}]}},
     {"entities": {"urls": [], "hashtags": []}}),
    ("no_url", {"text": SEVENTY_CHARS + " https://t.co/abc"}, {"text": SEVENTY_CHARS + " e.g. Wald's SPRT."}),
    ("no_url", {"text": SEVENTY_CHARS + " see www.evanmiller.org"}, {"text": SEVENTY_CHARS + " see Evan Miller."}),
    ("chars", {"text": "x" * 29}, {"text": "x" * 30}),
    ("chars", {"text": "@asker @bob " + "x" * 29}, {"text": "@asker @bob " + "x" * 30}),  # the handles don't count
    ("chars", {"text": "x" * 281}, {"text": "x" * 280}),
])
def test_each_seed_filter_drops_what_it_should_and_keeps_the_near_miss(lb, name, dropped, kept):
    FakeApify(lb, [tweet("t1"), reply("r-drop", "t1", **dropped), reply("r-keep", "t1", **kept)])
    records, quarantine, stats = collect(make_params(lb))

    assert [r["id"] for r in records] == ["apify:tweets:r-keep"]
    (q,) = quarantine
    assert q["source"] == "apify" and q["item"] == "r-drop" and q["reasons"] == [name]
    assert q["reason"].startswith(f"seed filter: {name}")
    assert q["raw"]["reply"]["id"] == "r-drop" and q["raw"]["tweet"]["id"] == "t1"
    assert stats["seed_filtered"] == {name: 1} and stats["pairs"] == 2 and stats["kept"] == 1


def test_quarantine_entry_carries_every_failed_reason(lb):
    bad = reply("r1", "t1", likes=1, minutes=2, text="Look https://t.co/zz",
                extendedEntities={"media": [{"type": "video"}]})
    FakeApify(lb, [tweet("t1"), bad, reply("r2", "t1", likes=0)])
    records, quarantine, stats = collect(make_params(lb))

    assert records == []
    first = quarantine[0]
    assert first["reasons"] == ["reply_likes", "reply_delay_minutes", "no_media", "no_url", "chars"]
    for reason in first["reasons"]:
        assert reason in first["reason"]
    assert first["raw"] == {"tweet": tweet("t1"), "reply": bad}  # nothing is lost
    assert stats["seed_filtered"] == {"reply_likes": 2, "reply_delay_minutes": 1, "no_media": 1, "no_url": 1,
                                      "chars": 1}


def test_malformed_items_are_quarantined_and_the_rest_continue(lb):
    items = [tweet("t1"), {"type": "tweet", "id": "x1", "createdAt": created(0)},  # no text
             {"type": "tweet", "text": "who am I", "createdAt": created(0)},  # no id
             reply("x2", "t1", createdAt="yesterday-ish"), ["not", "an", "object"],
             {"tweet": tweet("t9"), "reply": {"id": "x3"}},  # a pre-shaped pair with a broken reply
             reply("r1", "t1"), tweet("t1")]  # t1 again: a duplicate, not a second pair
    FakeApify(lb, items)
    records, quarantine, stats = collect(make_params(lb))

    assert [r["id"] for r in records] == ["apify:tweets:r1"]
    reasons = {q["item"]: q["reason"] for q in quarantine}
    assert reasons["x1"] == "malformed item: missing text"
    assert reasons[None].startswith("malformed item: missing id") or "not an object" in reasons[None]
    assert "unparseable createdAt 'yesterday-ish'" in reasons["x2"]
    assert reasons["x3"] == "malformed item: missing text, createdAt"
    assert len(quarantine) == 5 and stats["malformed"] == 5 and stats["duplicates"] == 1


def test_missing_token_is_a_one_line_user_error(lb, monkeypatch):
    monkeypatch.delenv("APIFY_TOKEN")
    FakeApify(lb, [tweet("t1"), reply("r1", "t1")])
    with pytest.raises(UserError) as exc:
        collect(make_params(lb))
    message = str(exc.value)
    assert "\n" not in message and message.startswith("set APIFY_TOKEN")
    assert lb.requests == []  # nothing was called without a token


@pytest.mark.parametrize("status", ["FAILED", "TIMED-OUT", "ABORTED"])
def test_a_run_that_does_not_succeed_is_a_user_error_naming_actor_status_and_run(lb, status):
    FakeApify(lb, [tweet("t1"), reply("r1", "t1")], final_status=status)
    with pytest.raises(UserError) as exc:
        collect(make_params(lb))
    message = str(exc.value)
    assert "\n" not in message and ACTOR in message and status in message and RUN_ID in message
    assert DATASET_ID in message  # where its partial results can be read from
    assert TOKEN not in message
    assert lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items") == []


def test_a_run_still_going_when_the_wait_ends_is_a_user_error(lb, monkeypatch):
    monkeypatch.setattr(apify, "RUN_WAIT_MARGIN_S", 0)
    FakeApify(lb, [tweet("t1"), reply("r1", "t1")], final_status="RUNNING")
    with pytest.raises(UserError) as exc:
        collect(make_params(lb, timeout_s=0.3))
    message = str(exc.value)
    assert "still running" in message and RUN_ID in message and DATASET_ID in message and "\n" not in message


def test_an_unreachable_api_is_a_one_line_user_error(lb):
    with pytest.raises(UserError) as exc:
        collect(make_params(lb, api_url="http://127.0.0.1:9", max_retries=1))
    message = str(exc.value)
    assert "cannot talk to http://127.0.0.1:9" in message and "\n" not in message and TOKEN not in message


def test_an_api_refusal_is_a_one_line_user_error(lb):
    lb.route("POST", "/v2/actors/apidojo~tweet-scraper/runs",
             json_response({"error": {"type": "record-not-found", "message": "Actor was not found"}}, 404))
    with pytest.raises(UserError) as exc:
        collect(make_params(lb))
    message = str(exc.value)
    assert "\n" not in message and "404" in message and "Actor was not found" in message and TOKEN not in message


@pytest.mark.parametrize("failures", [[429], [500], [429, 500, 503]])
def test_dataset_items_are_retried_by_the_client(lb, failures):
    FakeApify(lb, [tweet("t1"), reply("r1", "t1"), reply("r2", "t1")], item_failures=failures)
    records, quarantine, stats = collect(make_params(lb))

    assert [r["id"] for r in records] == ["apify:tweets:r1", "apify:tweets:r2"]
    pages = lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items")
    assert len(pages) == len(failures) + 2  # the failures, the page, and the empty page that ends the paging
    assert all(p["query"]["offset"] == ["0"] for p in pages[:len(failures) + 1])


def test_retries_give_up_after_max_retries_with_a_user_error(lb):
    FakeApify(lb, [tweet("t1"), reply("r1", "t1")], item_failures=[500] * 10)
    with pytest.raises(UserError) as exc:
        collect(make_params(lb, max_retries=2))
    assert "500" in str(exc.value) and "\n" not in str(exc.value)
    assert len(lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items")) == 3  # the first try and two retries


def test_the_token_appears_in_no_output(lb, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    FakeApify(lb, [tweet("t1"), reply("r1", "t1"), reply("r2", "t1", likes=0), reply("r3", "gone")],
              item_failures=[429])
    records, quarantine, stats = collect(make_params(lb))
    assert len(records) == 1 and len(quarantine) == 1
    captured = capsys.readouterr()
    for text in (json.dumps(records), json.dumps(quarantine), json.dumps(stats), caplog.text,
                 captured.out, captured.err):
        assert TOKEN not in text


def test_max_records_caps_the_pairs_and_stops_paging(lb):
    items = [tweet("t1")] + [reply(f"r{i}", "t1") for i in range(20)]
    FakeApify(lb, items)
    records, quarantine, stats = collect(make_params(lb, max_records=3), page_size=5)

    assert [r["id"] for r in records] == ["apify:tweets:r0", "apify:tweets:r1", "apify:tweets:r2"]
    assert stats["capped_at"] == 3
    assert len(lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items")) == 1  # the rest of the dataset is not read


def test_pagination_reads_every_page(lb):
    # Parents and replies fall on different pages, some replies before their parent.
    items = []
    for i in range(6):
        items += [reply(f"r{i}", f"t{i}"), tweet(f"t{i}")] if i % 2 else [tweet(f"t{i}"), reply(f"r{i}", f"t{i}")]
    items = items[1::2] + items[0::2]  # every parent and its reply end up about six items apart
    FakeApify(lb, items)
    records, quarantine, stats = collect(make_params(lb), page_size=5)

    assert sorted(r["id"] for r in records) == [f"apify:tweets:r{i}" for i in range(6)]
    assert stats["items"] == 12 and stats["unpaired_replies"] == 0
    pages = lb.calls("GET", f"/v2/datasets/{DATASET_ID}/items")
    assert [(p["query"]["offset"], p["query"]["limit"]) for p in pages] == [
        (["0"], ["5"]), (["5"], ["5"]), (["10"], ["5"]), (["12"], ["5"])]


def run_inputs(lb: Loopback) -> list[dict]:
    out = []
    for call in lb.calls("POST", "/v2/actors/apidojo~tweet-scraper/runs"):
        body = gzip.decompress(call["body"]) if call["headers"].get("Content-Encoding") == "gzip" else call["body"]
        out.append(json.loads(body))
    return out


def test_replies_whose_tweets_are_missing_are_completed_by_a_run_for_the_parents(lb):
    # What `"A/B test" filter:replies` returns: replies, mostly without their tweets.
    search = [tweet("t0"), reply("r0", "t0"), reply("r1", "p1"), reply("r2", "p2"), reply("r2b", "p2", likes=30),
              reply("r3", "p3")]
    parents = [tweet("p1", "Should we stop an A/B test early when it looks significant?"),
               tweet("p2", "Thread on sample sizes: https://t.co/abc"),  # a link: fails the seed filter as a tweet
               tweet("x9", "Another tweet the run happened to return")]  # p3 was deleted: not returned
    FakeApify(lb, search, parents=parents)
    records, quarantine, stats = collect(make_params(lb))

    assert [r["id"] for r in records] == ["apify:tweets:r0", "apify:tweets:r1"]
    assert records[1]["prompt"] == "Should we stop an A/B test early when it looks significant?"
    assert records[1]["meta"]["tweet_id"] == "p1"
    assert [(q["item"], q["reasons"]) for q in quarantine] == [("r2", ["tweet_no_url"]), ("r2b", ["tweet_no_url"])]
    assert stats["parents_fetch"] == "ids" and stats["parents_asked"] == 3 and stats["parents_found"] == 2
    assert stats["pairs_completed_by_fetch"] == 3 and stats["kept_completed_by_fetch"] == 1
    assert stats["pairs"] == 4 and stats["kept"] == 2 and stats["unpaired_replies"] == 1  # r3: its tweet is gone
    assert stats["seed_filtered"] == {"tweet_no_url": 2}
    assert stats["parents_actor_run_id"] == PARENTS_RUN and stats["parents_dataset_id"] == PARENTS_DATASET
    first, fetch = run_inputs(lb)
    assert first == make_params(lb).run_input
    assert fetch == {**make_params(lb).parents.run_input,
                     "startUrls": [f"https://x.com/i/status/{p}" for p in ("p1", "p2", "p3")]}


def test_parents_can_be_fetched_by_conversation_and_capped(lb):
    search = [reply("r1", "p1", conversationId="c1"), reply("r2", "p2", conversationId="c1"),
              reply("r3", "p3", conversationId="c2")]
    parents = [tweet("p1", "Bayesian or frequentist for a pricing test?"), tweet("p3", "How long should a test run?"),
               reply("c1-other", "p1")]  # the rest of a conversation is not a parent anybody waits for
    FakeApify(lb, search, parents=parents)
    params = make_params(lb, max_records=1)
    params = dataclasses.replace(params, parents=dataclasses.replace(params.parents, fetch="conversation"))
    records, quarantine, stats = collect(params)

    assert [r["id"] for r in records] == ["apify:tweets:r1"] and stats["capped_at"] == 1  # the cap holds
    assert run_inputs(lb)[1]["conversationIds"] == ["c1", "c2"]
    assert stats["pairs_completed_by_fetch"] == 1 and stats["parents_fetch"] == "conversation"


def test_no_second_run_without_an_actor_or_with_fetch_none(lb):
    FakeApify(lb, [reply("r1", "p1")], parents=[tweet("p1")])
    records, _, stats = collect(make_params(lb, actor=None, dataset_id=DATASET_ID))
    assert records == [] and lb.calls("POST") == [] and stats["parents_fetch"].startswith("no actor")
    records, _, stats = collect(no_fetch(lb))
    assert records == [] and len(lb.calls("POST")) == 1 and stats["unpaired_replies"] == 1


@pytest.mark.parametrize("name, tweet_changes", [
    ("tweet_no_media", {"extendedEntities": {"media": [{"type": "photo"}]}}),
    ("tweet_no_url", {"entities": {"urls": [{"url": "https://t.co/x"}], "hashtags": []}}),
    ("tweet_chars", {"text": "Thoughts?"}),
])
def test_the_seed_filters_apply_to_the_tweet_too(lb, name, tweet_changes):
    FakeApify(lb, [tweet("t1", **tweet_changes), reply("r1", "t1"), tweet("t2"), reply("r2", "t2")])
    records, quarantine, stats = collect(make_params(lb))
    assert [r["id"] for r in records] == ["apify:tweets:r2"]
    assert [q["reasons"] for q in quarantine] == [[name]] and stats["seed_filtered"] == {name: 1}
