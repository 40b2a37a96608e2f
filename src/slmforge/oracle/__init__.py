"""The LLM oracle: backends (claude, local) behind one content-addressed answer cache and a cost ledger."""
