"""Student evaluation: accuracy on held-out questions with the filters' parser and equivalence rules."""

from distilforge.evaluation.accuracy import (
    bootstrap_interval,
    evaluate_model,
    evaluate_teacher,
    load_eval_questions,
)

__all__ = ["bootstrap_interval", "evaluate_model", "evaluate_teacher", "load_eval_questions"]
