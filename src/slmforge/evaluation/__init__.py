"""Evaluation of the tuned model against its base on the same items: generation, metrics, report."""
