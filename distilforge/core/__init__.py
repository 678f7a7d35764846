"""Primitives every room builds on: config, records, grading, journal, budget, seeds, dataset writing, steps."""
