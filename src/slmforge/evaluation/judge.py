"""The pairwise judge: the oracle compares the base and the tuned answer to each test item in both orders.

A judge that prefers whichever answer comes first (a known bias of LLM judges) would otherwise decide the
comparison by the order we happen to use. Each item is asked twice, base first and tuned first; a verdict
that changes with the order is a tie, and how often that happens is reported as the judge's inconsistency.
Two identical answers are a tie without asking anyone.
"""

from __future__ import annotations

from slmforge.oracle.prompts import judge_request, judge_system
from slmforge.params import JudgeParams

ORDERS = ("base_first", "tuned_first")


def order_verdict(preference: float, order: str, tie_margin: float) -> tuple[str, str]:
    """(winner by model: tuned | base | tie, winner by position: first | second | tie) of one answer.
    `preference` is the judge's 0-10 preference for the answer in position B (second)."""
    if abs(preference - 5) <= tie_margin:
        return "tie", "tie"
    position = "second" if preference > 5 else "first"
    first = "base" if order == "base_first" else "tuned"
    second = "tuned" if first == "base" else "base"
    return (second if position == "second" else first), position


def combine(first: str | None, second: str | None) -> tuple[str, bool]:
    """(outcome, consistent): the two orders agree, or the outcome is a tie. An order the oracle could not
    answer leaves the item unjudged (None)."""
    if first is None or second is None:
        return None, False
    if first == second:
        return first, True
    return "tie", False


def judge_items(items: list[dict], oracle, domain: str, params: JudgeParams) -> tuple[list[dict], dict]:
    """Judge each test item's base and tuned answers. `items` carry id, question, reference and each side's
    generation; returns (per-item judgements, aggregate counts)."""
    if params.max_items:
        items = items[: params.max_items]
    system = judge_system(domain)
    same = [i["base"]["generation"].strip() == i["tuned"]["generation"].strip() for i in items]
    requests, where = [], {}
    for k, item in enumerate(items):
        if same[k]:
            continue
        base, tuned = item["base"]["generation"], item["tuned"]["generation"]
        where[k] = len(requests)
        requests.append(judge_request(f"{item['id']}#base_first", item["question"], item["reference"], base, tuned,
                                      system))
        requests.append(judge_request(f"{item['id']}#tuned_first", item["question"], item["reference"], tuned, base,
                                      system))
    answers = oracle.ask(requests, desc="evaluate: judge") if requests else []
    judged, positions = [], []
    for k, item in enumerate(items):
        if same[k]:
            judged.append({"id": item["id"], "outcome": "tie", "consistent": True, "identical": True})
            continue
        verdicts = {}
        for j, order in enumerate(ORDERS):
            ans = answers[where[k] + j]
            if ans is None:
                verdicts[order] = None
                continue
            winner, position = order_verdict(float(ans["preference"]), order, params.tie_margin)
            verdicts[order] = {"preference": float(ans["preference"]), "winner": winner, "position": position}
            positions.append(position)
        outcome, consistent = combine(*(v["winner"] if v else None for v in verdicts.values()))
        judged.append({"id": item["id"], "outcome": outcome, "consistent": consistent, **verdicts})
    done = [j for j in judged if j["outcome"] is not None]
    asked = [j for j in done if not j.get("identical")]
    decided = [p for p in positions if p != "tie"]
    winners = lambda j: {j[o]["winner"] for o in ORDERS}  # noqa: E731
    summary = {
        "items": len(items), "judged": len(done), "failed": len(items) - len(done), "identical": sum(same),
        "tuned_wins": sum(j["outcome"] == "tuned" for j in done),
        "base_wins": sum(j["outcome"] == "base" for j in done),
        "ties_both_orders": sum(j["outcome"] == "tie" and j["consistent"] for j in done),
        # inconsistent: the winner swapped with the order, or one order a win and the other a tie
        "flips_with_order": sum(not j["consistent"] and winners(j) == {"tuned", "base"} for j in done),
        "tie_in_one_order": sum(not j["consistent"] and "tie" in winners(j) for j in done),
        # A consistent judge has no reason to favour a position: 0.5 here is no bias, 1.0 always the first.
        "first_position_preference": sum(p == "first" for p in decided) / len(decided) if decided else float("nan"),
        "inconsistency": sum(not j["consistent"] for j in asked) / len(asked) if asked else float("nan"),
    }
    return judged, summary


def outcome_score(outcome: str | None) -> float | None:
    """A judged item as a paired per-item value for the tuned model: won 1, tie 0.5, lost 0."""
    return None if outcome is None else {"tuned": 1.0, "tie": 0.5, "base": 0.0}[outcome]
