"""Tweets and replies through an Apify actor (apidojo/tweet-scraper) or an existing dataset, as tweet -> reply pairs.

A search for replies (`filter:replies`) mostly returns replies whose tweet it did not return. Those wait for their
parent; once the dataset is read, the same actor runs again for the missing parents (`parents.fetch`: by the
tweets' URLs, or by conversation id) and the replies are paired with what it finds.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from datetime import datetime, timedelta

import impit  # apify-client's transport: after its retries, a dead connection surfaces as impit's error
from apify_client import ApifyClient
from apify_client.errors import ApifyApiError, ApifyClientError
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.params import ApifySourceParams, TweetFilterParams
from slmforge.sources.http import redact
from slmforge.sources.records import now_iso, tweet_pair, tweet_text

PAGE_SIZE = 1000  # dataset items per request: small enough that max_records stops the reading (and the bill) early
RETRY_DELAY = timedelta(milliseconds=500)  # first back-off of apify-client's exponential retries (its own default)
RUN_WAIT_MARGIN_S = 60  # the platform stops the run at timeout_s; wait a little longer to read its final status
SEARCH_KEYS = ("searchTerms", "twitterHandles", "conversationIds", "startUrls")  # what a run searched, for provenance
TWITTER_TIME = "%a %b %d %H:%M:%S %z %Y"  # tweet-scraper's createdAt: "Fri Nov 24 17:49:36 +0000 2023"
URL_IN_TEXT = re.compile(r"https?://|\bwww\.\w", re.IGNORECASE)
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED"}


def collect(params: ApifySourceParams, *, run_id: str, quarantine: list[dict], stats: dict,
            page_size: int = PAGE_SIZE, retry_delay: timedelta = RETRY_DELAY) -> list[dict]:
    """Pair records from the actor's run (or `dataset_id`), seed-filtered; filtered pairs and bad items go to
    `quarantine`. `page_size` and `retry_delay` exist for tests, which page and retry on a loopback server."""
    token = os.environ.get(params.token_env)
    if not token:
        raise UserError(f"set {params.token_env} to your Apify API token (Apify console > Settings > Integrations), "
                        f"or point sources.apify.token_env at the variable that holds it")
    # Retries (429, 5xx, dropped connections) are apify-client's, with exponential back-off and jitter.
    client = ApifyClient(token, api_url=params.api_url, max_retries=params.max_retries,
                         min_delay_between_retries=retry_delay)
    stats.update({"items": 0, "pairs": 0, "kept": 0, "unpaired_replies": 0, "malformed": 0, "duplicates": 0,
                  "seed_filtered": {}, "parents_asked": 0, "parents_found": 0, "pairs_completed_by_fetch": 0,
                  "kept_completed_by_fetch": 0})
    try:
        dataset_id, query = _dataset_to_read(client, params, stats)
        items = client.dataset(dataset_id).iterate_items(clean=True, chunk_size=page_size)
        waiting: dict[str, list[dict]] = {}
        records = _pairs_to_records(items, params, query=query, run_id=run_id, quarantine=quarantine, stats=stats,
                                    waiting=waiting)
        if waiting and "capped_at" not in stats:
            records += _fetch_parents(client, params, waiting, query=query, run_id=run_id, quarantine=quarantine,
                                      stats=stats, page_size=page_size, room=params.max_records - len(records)
                                      if params.max_records else 0)
            stats["kept"] = len(records)
        return records
    except ApifyApiError as exc:
        what = f"{exc.status_code} {exc.type}" if exc.type else str(exc.status_code)
        # The API does not echo the token, but an error line is printed and logged: make sure of it.
        raise UserError(redact(f"sources.apify: the Apify API at {params.api_url} answered {what}: {exc.message} "
                               f"(check the token, actor and dataset_id)", [token])) from None
    except (ApifyClientError, impit.HTTPError, OSError) as exc:
        raise UserError(redact(f"sources.apify: cannot talk to {params.api_url} after {params.max_retries} retries: "
                               f"{type(exc).__name__}: {exc}", [token])) from None


def _run_actor(client: ApifyClient, params: ApifySourceParams, run_input: dict, stats: dict, what: str) -> str:
    """Run the actor to the end and return its dataset id; a run that does not succeed is one line."""
    # logger=None: the default streams the actor's log and status through extra endpoints we do not need.
    # run_timeout makes the platform stop the run (and its bill) when we would stop waiting for it.
    run = client.actor(params.actor).call(
        run_input=run_input, run_timeout=timedelta(seconds=params.timeout_s),
        wait_duration=timedelta(seconds=params.timeout_s + RUN_WAIT_MARGIN_S), logger=None)
    if run is None:
        raise UserError(f"sources.apify: the run of actor {params.actor} disappeared before it finished; run again")
    stats[f"{what}actor_run_id"], stats[f"{what}dataset_id"] = run.id, run.default_dataset_id
    if run.status != "SUCCEEDED":
        ended = "ended" if run.status in TERMINAL else f"is still running after {params.timeout_s:g}s:"
        raise UserError(
            f"sources.apify: actor {params.actor} run {run.id} {ended} {run.status}"
            f"{': ' + run.status_message if run.status_message else ''}; what it scraped is in dataset "
            f"{run.default_dataset_id} (set sources.apify.dataset_id to read it, or raise timeout_s)")
    return run.default_dataset_id


def _dataset_to_read(client: ApifyClient, params: ApifySourceParams, stats: dict) -> tuple[str, str]:
    """The dataset to page through and a readable description of the pull; runs the actor when no dataset_id."""
    if params.dataset_id:
        stats["dataset_id"] = params.dataset_id
        return params.dataset_id, f"apify dataset {params.dataset_id}"
    if not params.actor:
        raise UserError("sources.apify: set either `actor` (to run it) or `dataset_id` (to read an existing dataset)")
    searched = "; ".join(f"{k}={params.run_input[k]}" for k in SEARCH_KEYS if k in params.run_input)
    query = f"apify actor {params.actor}" + (f" {searched}" if searched else "")
    return _run_actor(client, params, params.run_input, stats, ""), query


def _keep(pair: dict, params: ApifySourceParams, quarantine: list[dict], seed_filtered: Counter) -> bool:
    """Whether a pair passes the seed filters; one that does not goes to quarantine with every reason."""
    failed = seed_filter_failures(pair, params.filters)
    if failed:
        seed_filtered.update(name for name, _ in failed)
        quarantine.append({
            "source": "apify", "item": pair["reply"]["id"],
            "reason": "seed filter: " + "; ".join(f"{name} ({why})" for name, why in failed),
            "reasons": [name for name, _ in failed], "raw": pair})
    return not failed


def _pairs_to_records(items: Iterable, params: ApifySourceParams, *, query: str, run_id: str,
                      quarantine: list[dict], stats: dict, waiting: dict | None = None) -> list[dict]:
    fetched_at = now_iso()
    records: list[dict] = []
    seed_filtered: Counter = Counter()
    # closing(): leaving early (the cap) must still count the replies left waiting for a parent.
    with tqdm(items, desc="apify items", unit=" items") as bar, \
            closing(tweet_reply_pairs(bar, quarantine, stats, waiting)) as pairs:
        for pair in pairs:
            stats["pairs"] += 1
            if not _keep(pair, params, quarantine, seed_filtered):
                continue
            records.append(tweet_pair(pair, source="apify", query=query, fetched_at=fetched_at, run_id=run_id))
            if params.max_records and len(records) >= params.max_records:
                # Stop reading: leaving the generator stops apify-client's paging, so no page is paid for in vain.
                stats["capped_at"] = params.max_records
                break
    stats["kept"] = len(records)
    stats["seed_filtered"] = dict(sorted(seed_filtered.items()))
    return records


def _fetch_parents(client: ApifyClient, params: ApifySourceParams, waiting: dict[str, list[dict]], *, query: str,
                   run_id: str, quarantine: list[dict], stats: dict, page_size: int, room: int) -> list[dict]:
    """Run the actor again for the tweets the waiting replies answer, pair what it finds, seed-filter both tweets.
    `room`: records the cap still allows (0: no cap)."""
    p = params.parents
    if p.fetch not in ("ids", "conversation", "none"):
        raise UserError(f"params.yaml: sources.apify.parents.fetch must be ids, conversation or none, got {p.fetch!r}")
    if p.fetch == "none" or not params.actor:  # reading a dataset_id alone: there is no actor to ask
        stats["parents_fetch"] = "off" if p.fetch == "none" else "no actor (sources.apify.actor is null)"
        return []
    wanted = sorted(waiting)[: p.max_parents or None]
    if p.fetch == "ids":
        run_input = {**p.run_input, "startUrls": [f"https://x.com/i/status/{tid}" for tid in wanted]}
    else:  # a parent is in its reply's conversation (the conversation's root, or a reply inside it)
        conversations = sorted({str(r.get("conversationId") or parent) for parent in wanted for r in waiting[parent]})
        run_input = {**p.run_input, "conversationIds": conversations}
    stats["parents_fetch"], stats["parents_asked"] = p.fetch, len(wanted)
    dataset_id = _run_actor(client, params, run_input, stats, "parents_")
    fetched_at, records, seed_filtered = now_iso(), [], Counter(stats["seed_filtered"])
    asked = set(wanted)
    items = client.dataset(dataset_id).iterate_items(clean=True, chunk_size=page_size)
    with tqdm(items, desc="apify parents", unit=" items") as bar:
        for item in bar:
            if not isinstance(item, dict) or str(item.get("id")) not in asked or str(item["id"]) not in waiting:
                continue  # the rest of a conversation, or a parent already paired
            if _malformed(item):
                _quarantine_malformed(item, _malformed(item), quarantine, stats)
                continue
            stats["parents_found"] += 1
            for reply in waiting.pop(str(item["id"])):
                pair = {"tweet": item, "reply": reply}
                stats["pairs"] += 1
                stats["pairs_completed_by_fetch"] += 1
                stats["unpaired_replies"] -= 1
                if not _keep(pair, params, quarantine, seed_filtered):
                    continue
                records.append(tweet_pair(pair, source="apify", query=query, fetched_at=fetched_at, run_id=run_id))
                stats["kept_completed_by_fetch"] += 1
                if room and len(records) >= room:
                    stats["capped_at"] = params.max_records
                    stats["seed_filtered"] = dict(sorted(seed_filtered.items()))
                    return records
    stats["seed_filtered"] = dict(sorted(seed_filtered.items()))
    return records


def tweet_reply_pairs(items: Iterable, quarantine: list[dict], stats: dict,
                      waiting: dict[str, list[dict]] | None = None) -> Iterator[dict]:
    """{"tweet", "reply"} pairs from a stream of tweet-scraper items, in the order they complete.

    A reply pairs with its parent (inReplyToId) whichever comes first in the dataset, so replies wait for their
    parent; those still waiting at the end are counted as `unpaired_replies` and left in `waiting` (parent id ->
    replies) for a fetch of their parents. Items already shaped as {"tweet", "reply"} pass through. Malformed
    items go to `quarantine`."""
    by_id: dict[str, dict] = {}
    waiting = {} if waiting is None else waiting  # parent id -> replies seen before their parent
    try:
        for item in items:
            stats["items"] += 1
            if isinstance(item, dict) and item.get("noResults"):
                stats["no_results"] = stats.get("no_results", 0) + 1  # tweet-scraper's marker for an empty search
                continue
            if isinstance(item, dict) and "tweet" in item and "reply" in item:
                bad = _malformed(item["tweet"]) or _malformed(item["reply"])
                if bad:
                    _quarantine_malformed(item, bad, quarantine, stats)
                else:
                    yield item
                continue
            bad = _malformed(item)
            if bad:
                _quarantine_malformed(item, bad, quarantine, stats)
                continue
            tid = str(item["id"])
            if tid in by_id:  # several search terms find the same tweet
                stats["duplicates"] += 1
                continue
            by_id[tid] = item
            parent = item.get("inReplyToId")
            if parent is not None:
                if str(parent) in by_id:
                    yield {"tweet": by_id[str(parent)], "reply": item}
                else:
                    waiting.setdefault(str(parent), []).append(item)
            elif item.get("isReply"):
                stats["unpaired_replies"] += 1  # a reply that does not say to what
            for reply in waiting.pop(tid, []):
                yield {"tweet": item, "reply": reply}
    finally:
        stats["unpaired_replies"] += sum(len(replies) for replies in waiting.values())


def _malformed(tweet) -> str | None:
    if not isinstance(tweet, dict):
        return f"not an object: {type(tweet).__name__}"
    missing = [k for k in ("id", "text", "createdAt") if not tweet.get(k)]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(tweet["text"], str):
        return "text is not a string"
    try:
        parse_created(tweet["createdAt"])
    except (TypeError, ValueError):
        return f"unparseable createdAt {tweet['createdAt']!r}"
    return None


def _quarantine_malformed(item, reason: str, quarantine: list[dict], stats: dict) -> None:
    stats["malformed"] += 1
    item_id = (item.get("id") or (item.get("reply") or {}).get("id")) if isinstance(item, dict) else None
    quarantine.append({"source": "apify", "item": item_id, "reason": f"malformed item: {reason}", "raw": item})


def parse_created(value: str) -> datetime:
    """tweet-scraper's createdAt ("Fri Nov 24 17:49:36 +0000 2023"); ISO 8601 is accepted for other actors."""
    try:
        return datetime.strptime(value, TWITTER_TIME)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            raise ValueError(f"no time zone in {value!r}") from None
        return parsed


def _has_media(tweet: dict) -> bool:
    # tweet-scraper puts photos and videos in extendedEntities.media; some versions also fill a top-level `media`.
    return bool((tweet.get("extendedEntities") or {}).get("media") or tweet.get("media")
                or (tweet.get("entities") or {}).get("media"))


def _has_url(tweet: dict) -> bool:
    return bool((tweet.get("entities") or {}).get("urls") or URL_IN_TEXT.search(tweet.get("text") or ""))


def seed_filter_failures(pair: dict, filters: TweetFilterParams) -> list[tuple[str, str]]:
    """(filter name, why) for every seed filter the pair fails; empty when it passes. Bounds are inclusive.

    The reply's reception (likes, its author's followers) and the delay are the pair's; the content filters (no
    media, no URL, the length) apply to both tweets, since the tweet becomes the prompt: a picture or a link the
    model cannot see would leave the reply answering nothing it was shown. The tweet's are named `tweet_...`."""
    tweet, reply = pair["tweet"], pair["reply"]
    failed = []

    def check_range(name: str, value: float, bounds: list) -> None:
        if not bounds[0] <= value <= bounds[1]:
            failed.append((name, f"{value:g} not in [{bounds[0]:g}, {bounds[1]:g}]"))

    check_range("reply_likes", reply.get("likeCount") or 0, filters.reply_likes)
    check_range("author_followers", (reply.get("author") or {}).get("followers") or 0, filters.author_followers)
    delay = (parse_created(reply["createdAt"]) - parse_created(tweet["createdAt"])).total_seconds() / 60
    check_range("reply_delay_minutes", round(delay, 2), filters.reply_delay_minutes)
    if filters.no_media and _has_media(reply):
        failed.append(("no_media", "the reply has media"))
    if filters.no_url and _has_url(reply):
        failed.append(("no_url", "the reply has a link"))
    # Characters of the text that becomes the response (leading @mentions dropped), not of the raw tweet.
    check_range("chars", len(tweet_text(reply)), filters.chars)
    if filters.no_media and _has_media(tweet):
        failed.append(("tweet_no_media", "the tweet has media"))
    if filters.no_url and _has_url(tweet):
        failed.append(("tweet_no_url", "the tweet has a link"))
    check_range("tweet_chars", len(tweet_text(tweet)), filters.chars)
    return failed
