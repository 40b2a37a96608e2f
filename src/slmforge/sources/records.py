"""Raw-record constructors shared by every source, and the parsers of each real API's item shape.

The sample corpus is stored in the real APIs' shapes and goes through these same parsers, so the
embedded path exercises the code that live sources use.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timezone

from bs4 import BeautifulSoup


def html_to_text(html: str) -> str:
    """HTML body to plain text; <pre> code blocks become fenced blocks so code survives."""
    soup = BeautifulSoup(html or "", "html.parser")
    for pre in soup.find_all("pre"):
        pre.replace_with(f"\n```\n{pre.get_text().strip()}\n```\n")
    for code in soup.find_all("code"):
        code.replace_with(f"`{code.get_text()}`")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all(["p", "li", "h1", "h2", "h3", "blockquote"]):
        block.insert_after("\n\n")
    text = soup.get_text()
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def record(*, id: str, source: str, kind: str, prompt: str = "", response: str = "", text: str = "",
           meta: dict | None = None, query: str, url: str | None, fetched_at: str, run_id: str) -> dict:
    return {
        "id": id, "source": source, "kind": kind, "prompt": prompt, "response": response, "text": text,
        "meta": meta or {},
        "provenance": {"query": query, "url": url, "fetched_at": fetched_at, "run_id": run_id},
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def stackexchange_pair(item: dict, **prov) -> dict | None:
    """A StackExchange API 2.3 question (filter withbody, answers included) to a pair record, answered by its
    accepted answer or else its top-scored one; None when it has no answer."""
    answers = item.get("answers") or []
    if not answers:
        return None
    accepted = [a for a in answers if a.get("is_accepted")]
    best = accepted[0] if accepted else max(answers, key=lambda a: a.get("score", 0))
    title = html_to_text(item.get("title", ""))
    body = html_to_text(item.get("body", ""))
    site = item.get("site", "stats")
    return record(
        id=f"stackexchange:{site}:{item['question_id']}", kind="pair",
        prompt=f"{title}\n\n{body}".strip(), response=html_to_text(best.get("body", "")),
        meta={"origin": "stackexchange", "site": site, "tags": item.get("tags", []),
              "score": item.get("score", 0), "answer_score": best.get("score", 0),
              "accepted": bool(best.get("is_accepted")), "answer_id": best.get("answer_id"),
              "created": item.get("creation_date")},
        url=item.get("link"), **prov,
    )


LEADING_MENTIONS = re.compile(r"^(?:@\w+\s+)+")


def tweet_text(tweet: dict) -> str:
    """A tweet's text as a person reads it: X's HTML escapes (&amp;) undone and the @handles that open every
    reply (they address the thread, they are not the answer) dropped."""
    return LEADING_MENTIONS.sub("", html.unescape(tweet["text"])).strip()


def tweet_pair(item: dict, **prov) -> dict:
    """An Apify tweet-scraper tweet/reply pair to a pair record: the tweet asks, the reply answers."""
    tweet, reply = item["tweet"], item["reply"]
    author = reply.get("author") or {}
    return record(
        id=f"apify:tweets:{reply['id']}", kind="pair", prompt=tweet_text(tweet), response=tweet_text(reply),
        meta={"origin": "tweets", "tweet_id": tweet["id"], "lang": reply.get("lang"),
              "reply_likes": reply.get("likeCount", 0), "tweet_likes": tweet.get("likeCount", 0),
              "author": author.get("userName"), "author_followers": author.get("followers", 0),
              "tweet_created": tweet.get("createdAt"), "reply_created": reply.get("createdAt"),
              "hashtags": [h.get("text") for h in (reply.get("entities") or {}).get("hashtags", [])],
              "urls": [u.get("expanded_url") or u.get("url") for u in (reply.get("entities") or {}).get("urls", [])]},
        url=reply.get("url") or f"https://x.com/{author.get('userName', 'i')}/status/{reply['id']}", **prov,
    )


def arxiv_document(entry: dict, **prov) -> dict:
    """A parsed arXiv Atom entry to a document record (title and abstract) for the synthesize stage."""
    abs_url = entry["id"]
    arxiv_id = re.sub(r"v\d+$", "", abs_url.rsplit("/abs/", 1)[-1])
    title = " ".join(entry.get("title", "").split())
    summary = " ".join(entry.get("summary", "").split())
    return record(
        id=f"arxiv:{arxiv_id}", kind="document", text=f"{title}\n\n{summary}",
        meta={"origin": "arxiv", "title": title, "categories": entry.get("categories", []),
              "authors": [a.get("name") for a in entry.get("authors", [])], "published": entry.get("published")},
        url=abs_url, **prov,
    )
