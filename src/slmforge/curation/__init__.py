"""Curation of raw records: normalise, rules, language, toxicity, PII, de-duplication; `clean` runs them all."""
