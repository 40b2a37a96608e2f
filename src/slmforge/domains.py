"""One adapter per domain from one corpus: which split rows a domain takes (by origin, source, tag or a meta field),
and reports/domains.md, every domain's verdict side by side."""

from __future__ import annotations

import math

from slmforge.errors import UserError
from slmforge.params import DomainParams


def in_domain(row: dict, domain: DomainParams) -> bool:
    meta = row.get("meta") or {}
    if domain.origins and meta.get("origin") not in domain.origins:
        return False
    if domain.sources and row.get("source") not in domain.sources:
        return False
    if domain.tags and not set(meta.get("tags") or []) & set(domain.tags):
        return False
    for key, wanted in domain.fields.items():
        accepted = wanted if isinstance(wanted, list) else [wanted]
        if meta.get(key) not in accepted:
            return False
    return True


def select(rows: list[dict], domain: DomainParams) -> list[dict]:
    return [r for r in rows if in_domain(r, domain)]


def select_split(split: dict[str, list[dict]], name: str, domain: DomainParams) -> dict[str, list[dict]]:
    """The domain's rows of every part of the split; a domain with no training rows is a one-line error."""
    chosen = {part: select(rows, domain) for part, rows in split.items()}
    for part in ("train", "val"):  # training needs both; evaluate copes with a domain without probes
        if part in chosen and not chosen[part]:
            raise UserError(f"domains.{name} selects no {part} row (origins {domain.origins}, sources "
                            f"{domain.sources}, tags {domain.tags}, fields {domain.fields}): widen it in conf/domains/")
    if "test" in chosen and not chosen["test"] and not chosen.get("probes"):
        raise UserError(f"domains.{name} selects no test item and no probe: nothing to evaluate; widen it in "
                        "conf/domains/")
    return chosen


def pick(domains: dict[str, DomainParams], name: str | None) -> str:
    """The domain a command works on: the one named, or the only one there is."""
    if name is None and len(domains) == 1:
        return next(iter(domains))
    if name not in domains:
        raise UserError(f"--domain: pick one of {', '.join(domains)}" if name is None else
                        f"--domain {name}: no such domain in params.yaml (domains: {', '.join(domains)})")
    return name


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def render(results: dict[str, dict], domains: dict[str, DomainParams]) -> str:
    """reports/domains.md from each domain's metrics/eval/<domain>.json."""
    lines = ["# Domains: one adapter each", "",
             "Each domain trains its own adapter on its rows of the same split and is evaluated on its own test items "
             "and probes (`train@D`, `evaluate@D`); `slmforge serve` serves them all on one base.", "",
             "| domain | selects | verdict | metric | n | base | tuned | rel. improvement | Wilcoxon p | probe accuracy "
             "(base → tuned) | perplexity (base → tuned) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for name, d in domains.items():
        r = results.get(name)
        what = "; ".join(f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}"
                         for k, v in (("origins", d.origins), ("sources", d.sources), ("tags", d.tags),
                                      *d.fields.items()) if v) or "everything"
        if r is None:
            lines.append(f"| {name} | {what} | not evaluated | | | | | | | | |")
            continue
        m = r["per_metric"].get(r["metric"], {})
        b, t = r["base"], r["tuned"]
        lines.append(f"| {name} | {what} | **{r['verdict']}** | {r['metric']} | {r['stats']['n']} | "
                     f"{_num(m.get('mean_base'), '.4f')} | {_num(m.get('mean_tuned'), '.4f')} | "
                     f"{_num(r['stats']['relative_improvement'], '+.1%')} | {_num(r['stats']['wilcoxon_p'], '.3g')} | "
                     f"{_num(b.get('probe_accuracy'), '.3f')} → {_num(t.get('probe_accuracy'), '.3f')} | "
                     f"{_num(b.get('perplexity'), '.2f')} → {_num(t.get('perplexity'), '.2f')} |")
    lines += ["", "Reasons, by domain:", ""]
    for name in domains:
        if name in results:
            lines.append(f"- **{name}**: " + "; ".join(results[name]["reasons"]) + ".")
    return "\n".join(lines) + "\n"
