"""Final-answer extraction and comparison for chain-of-thought text.

One parser serves the filters and the student evaluation, so "correct" means the same thing when we
keep a teacher rationale and when we score the student.
"""

from __future__ import annotations

import re
import string
from fractions import Fraction

_NUMBER = r"-?\$?\s*-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_FRAC_RE = re.compile(r"\\d?frac\{([^{}]+)\}\{([^{}]+)\}")
_HASHES_RE = re.compile(r"^[ \t]*####[ \t]*(.+?)[ \t]*$", re.M)
_PHRASE_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+?)(?:\s*(?:\.(?:\s|$)|\n|$))",
    re.I,
)
_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_REFUSAL_RE = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i'm unable|i am unable|as an ai\b|i won'?t)",
    re.I,
)


def _boxed(text: str) -> tuple[int, str] | None:
    """Last \\boxed{...} with balanced braces: (start offset, content)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return start, text[i + 1 : j]
    return None


def split_answer(text: str) -> tuple[str, str | None]:
    """Split a completion into (rationale, raw final answer); answer is None when none is stated.

    Understands `#### 42`, `\\boxed{42}`, `The answer is 42.`, `Final answer: 42` and `Answer: yes`;
    the last statement wins, since models often restate earlier guesses.
    """
    candidates: list[tuple[int, str]] = []
    boxed = _boxed(text)
    if boxed:
        candidates.append(boxed)
    for m in _HASHES_RE.finditer(text):
        candidates.append((m.start(), m.group(1)))
    for m in _PHRASE_RE.finditer(text):
        candidates.append((m.start(), m.group(1)))
    if not candidates:
        return text.strip(), None
    start, raw = max(candidates, key=lambda c: c[0])
    raw = raw.strip().strip("*").strip()
    return text[:start].strip(), raw or None


def parse_number(raw: str) -> Fraction | None:
    """First number in `raw` as an exact Fraction: handles $, commas, units, %, a/b, \\frac{a}{b}."""
    raw = raw.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\!", "")
    frac = _FRAC_RE.search(raw)
    if frac:
        num, den = parse_number(frac.group(1)), parse_number(frac.group(2))
        if num is not None and den:
            sign = -1 if raw[: frac.start()].strip().endswith("-") else 1
            return sign * num / den
    m = _NUMBER_RE.search(raw)
    if not m:
        return None
    token = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    negative = token.startswith("-")
    token = token.lstrip("-")
    try:
        if "/" in token:
            num, den = token.split("/", 1)
            value = Fraction(num) / Fraction(den) if Fraction(den) else None
        else:
            value = Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None
    if value is None:
        return None
    return -value if negative else value


def parse_yes_no(raw: str) -> str | None:
    words = re.findall(r"[a-z]+", raw.lower())
    for word in words[:3]:
        if word in _YES_NO:
            return _YES_NO[word]
    return None


def parse_choice(raw: str) -> str | None:
    """A multiple-choice letter: 'B', '(b)', 'B)', 'option B', 'B. Paris'."""
    m = re.match(r"^\s*(?:option\s+|\()?([A-Ea-e])(?:\)|\.|:|\s|$)", raw)
    return m.group(1).upper() if m else None


def normalize_text(raw: str) -> str:
    raw = raw.lower().strip()
    raw = raw.translate(str.maketrans("", "", string.punctuation))
    raw = re.sub(r"\b(a|an|the)\b", " ", raw)
    return " ".join(raw.split())


def canonical(raw: str, answer_type: str) -> str | None:
    """A canonical string for `raw` under `answer_type`, or None when it cannot be read as one."""
    if answer_type == "number":
        value = parse_number(raw)
        if value is None:
            return None
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    if answer_type == "yes_no":
        return parse_yes_no(raw)
    if answer_type == "choice":
        return parse_choice(raw)
    text = normalize_text(raw)
    return text or None


def canonical_gold(value: object, answer_type: str) -> str | None:
    """Gold answers come as bools (StrategyQA), numbers, or full solutions ending in `#### N` (GSM8K)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return canonical(str(value), "number")
    text = str(value)
    _, stated = split_answer(text)
    return canonical(stated if stated is not None else text, answer_type)


def infer_answer_type(gold: object) -> str:
    if isinstance(gold, bool):
        return "yes_no"
    if isinstance(gold, (int, float)):
        return "number"
    if gold is None:
        return "text"
    text = str(gold)
    _, stated = split_answer(text)
    probe = stated if stated is not None else text
    if parse_yes_no(probe) is not None and len(probe.split()) <= 2:
        return "yes_no"
    if parse_number(probe) is not None and len(probe.split()) <= 4:
        return "number"
    return "text"


_SYMBOLIC = re.compile(r"\\|\^|sqrt|\bpi\b|\{")


def looks_symbolic(*texts: str | None) -> bool:
    return any(t is not None and _SYMBOLIC.search(t) for t in texts)


def symbolic_equal(gold: str, answer: str) -> bool:
    """LaTeX / symbolic equivalence with math-verify (e.g. \\frac{\\sqrt{2}}{2} = 1/\\sqrt{2}).

    Its timeouts use SIGALRM, which fails off the main thread and then answers "not equal", so they
    are off here: the inputs are single short answers.
    """
    try:
        import logging

        from math_verify import parse, verify
    except ImportError:
        return False
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    try:
        g = parse(f"${gold}$", parsing_timeout=None)
        a = parse(f"${answer}$", parsing_timeout=None)
        return bool(g and a and verify(g, a, timeout_seconds=None))
    except Exception:
        return False


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL_RE.match(text))


def answers_match(answer: str | None, gold: str | None) -> bool:
    """Both sides already canonical for the same answer type."""
    return answer is not None and gold is not None and answer == gold
