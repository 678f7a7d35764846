"""The answer parser on real GSM8K and StrategyQA answers and the formats teachers write."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest
from conftest import DATA

from distilforge.core.grading import canonical, canonical_gold, parse_number, split_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 16 - 3 = 13.\n#### 13", "13"),
        ("Step 1 ... The answer is 42.", "42"),
        ("The final answer is \\boxed{42}", "42"),
        ("Thus $\\boxed{\\frac{3}{4}}$.", "3/4"),
        ("The answer is $1,234.", "1234"),
        ("The answer is 18 dollars.", "18"),
        ("The answer is 0.75", "3/4"),
        ("The answer is 3/4 of a cup.", "3/4"),
        ("The answer is -5 degrees.", "-5"),
        ("Final answer: 12.50", "25/2"),
        ("The answer is 7 apples. Earlier I said the answer is 6, which was wrong.", "6"),
        ("I guessed 5 first.\nThe answer is 7.", "7"),
        ("The answer is 25%.", "25"),
        ("Answer: $ 3,000.00", "3000"),
    ],
)
def test_numbers(text, expected):
    _, raw = split_answer(text)
    assert canonical(raw, "number") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Penguins cannot fly.\nThe answer is no.", "no"), ("So the answer is: Yes", "yes"),
     ("The answer is true.", "yes"), ("The answer is False", "no")],
)
def test_yes_no(text, expected):
    _, raw = split_answer(text)
    assert canonical(raw, "yes_no") == expected


def test_rationale_is_the_text_before_the_answer():
    rationale, raw = split_answer("3 dozen is 36.\n36 * 0.5 = 18.\nThe answer is 18.")
    assert rationale == "3 dozen is 36.\n36 * 0.5 = 18." and raw == "18"


def test_no_answer():
    assert split_answer("I think it is a lot.") == ("I think it is a lot.", None)
    assert parse_number("no digits here") is None


def test_every_gsm8k_gold_answer_parses():
    for name in ("train.jsonl", "test.jsonl"):
        with open(DATA / "gsm8k" / name) as fh:
            for line in fh:
                row = json.loads(line)
                expected = Fraction(row["answer"].split("####")[-1].strip().replace(",", ""))
                gold = canonical_gold(row["answer"], "number")
                assert gold is not None and Fraction(gold) == expected, row["answer"][-40:]


def test_gsm8k_solutions_restated_by_a_teacher_match_gold():
    """Turn real GSM8K solutions into the other answer styles and check they still match."""
    with open(DATA / "gsm8k" / "test.jsonl") as fh:
        rows = [json.loads(line) for _, line in zip(range(300), fh, strict=False)]
    for row in rows:
        gold = canonical_gold(row["answer"], "number")
        body, final = row["answer"].rsplit("####", 1)
        final = final.strip()
        value = Fraction(final.replace(",", ""))
        dollars = f"${int(value):,}" if value.denominator == 1 else f"${float(value):,.2f}"
        for styled in (f"{body}The answer is {final}.", f"{body}The answer is {dollars}.",
                       f"{body}So the final answer is \\boxed{{{final}}}"):
            _, raw = split_answer(re.sub(r"<<[^>]*>>", "", styled))
            assert canonical(raw, "number") == gold, styled[-60:]


def test_strategyqa_gold():
    with open(DATA / "strategyqa" / "dev.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            assert canonical_gold(row["answer"], "yes_no") == ("yes" if row["answer"] else "no")


@pytest.mark.parametrize(("text", "expected"), [("The answer is (B).", "B"), ("Answer: c) Paris", "C"),
                                                ("The answer is option D", "D"), ("The answer is E. Oslo", "E")])
def test_multiple_choice_letters(text, expected):
    _, raw = split_answer(text)
    assert canonical(raw, "choice") == expected


def test_symbolic_answers_match_with_math_verify():
    from distilforge.core.records import Record
    from distilforge.modes import parse_record
    from distilforge.quality.checks import WrongAnswer

    def record(text, gold, gold_raw):
        r = Record(seed_id="s", sample_index=0, question="q", gold=gold, answer_type="text", prompt=[],
                   teacher_model="t", text=text, mode="cot")
        r.meta["gold_raw"] = gold_raw
        return parse_record(r)

    check = WrongAnswer().check
    assert check(record("So \\boxed{\\frac{\\sqrt{2}}{2}}", "sqrt22", "\\frac{1}{\\sqrt{2}}")) is None
    assert check(record("So \\boxed{\\frac{\\sqrt{3}}{2}}", "sqrt22", "\\frac{1}{\\sqrt{2}}")) is not None
