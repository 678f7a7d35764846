"""Primitives every room builds on: grading, journal, budget, prices, seeds, run files, redaction, URLs, tokens."""
