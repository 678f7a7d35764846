"""Final-answer extraction, canonical answers and the one grading rule.

One parser and one rule (`grade`) serve the filters, adaptive sampling, self-consistency voting and
the student evaluation, so "correct" means the same thing everywhere.

What counts as a stated final answer (`split_answer`), latest statement first:
- `\\boxed{...}` (LaTeX; `\\text{}` and units inside are fine);
- `#### 42`, at a line start or inline after a sentence, when what follows is a value
  (`#### Step 2` and `### Step 2: compute` are headings, not answers);
- `The (final) answer is 42`, `Answer: yes`, `**Answer:** 42`, `Final Answer: $\\boxed{42}$`,
  `The answer to the question is 42`, a `Final Answer` heading followed by a line, `42 is the answer`
  and `... which is 6. This is the answer.`;
  a phrase that only mentions an answer is not a statement: `I said the answer is 6, which was wrong`,
  `the answer is not 6`, `check if the answer is 6`, `the answer is correct`, the prompt's placeholder
  `The answer is X.`, or a phrase quoted inside a sentence (`of the form "The answer is X."`).
Only when none of those occurs anywhere:
- the value after the last `=` on a short last line (`Total = 5 + 3 = 8`; pleasantries after it aside);
- the last sentence that opens with yes/no: `Yes, because ...`, `No.`, `So, no.`, `A: Yes, ...`
  (not when a phrase negates an answer: `No, the answer is not yes or no.`).
Nothing else: a text that states no answer gives None even when it mentions the right number.

Numbers are exact Fractions: `$1,234.00` == `1234`, `\\frac{1}{2}` == `0.5` == `1/2`. A percentage is
the number as written, `50%` -> `50` (GSM8K states percentages as bare numbers), so `50%` != `0.5`.

`grade` compares canonical forms, then (for number/text answers that are LaTeX or symbolic) asks
math-verify in a worker process under a hard deadline (`SYMBOLIC_DEADLINE`): a pathological answer
costs at most that and counts as wrong; plain numbers, yes/no and letters never reach the worker.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import string
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Canonical answers
# ---------------------------------------------------------------------------------------------

_NUMBER = r"-?(?:\$\s{0,3})?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s{0,3}/\s{0,3}\d+(?:\.\d+)?)?|-?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_PLAIN_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")  # ASCII digits, read by parse_number's fast path
_FRAC_RE = re.compile(r"\\frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}")
_BEFORE_FRAC_RE = re.compile(r"(-\s*)?(\d+)?\s*$")  # `-\frac`, mixed `2\frac`
_WORD_NUMBERS = {
    w: i for i, w in enumerate([
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"])
} | {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_WORD_NUMBER_RE = re.compile(
    r"^\W*((?:(?:" + "|".join([*_WORD_NUMBERS, *_SCALES]) + r")(?:[\s-]+(?:and[\s-]+)?|\b))+)", re.I)


def _words_to_number(words: str) -> int:
    """`three hundred and twenty-five` -> 325."""
    total = current = 0
    for word in re.findall(r"[a-z]+", words.lower()):
        if word in _WORD_NUMBERS:
            current += _WORD_NUMBERS[word]
        elif word in _SCALES:
            scale = _SCALES[word]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * scale
                current = 0
    return total + current
_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}
_REFUSAL_RE = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i'm unable|i am unable|as an ai\b|i won'?t)",
    re.I,
)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def _braced(text: str, open_at: int, limit: int = 1000) -> tuple[int, str] | None:
    """The content of the brace group opening at `open_at`, and the index after its closing brace
    (None when it does not close within `limit` characters: no answer is that long)."""
    depth = 0
    for j in range(open_at, min(len(text), open_at + limit)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1, text[open_at + 1 : j]
    return None


def _unbox(raw: str) -> str:
    """`\\boxed{x}` / `\\fbox{x}` -> x (the last box when there are several)."""
    boxes = list(re.finditer(r"\\(?:boxed|fbox)\s*(?=\{)", raw))
    if not boxes:
        return raw
    group = _braced(raw, boxes[-1].end())
    return group[1] if group else raw


def clean_latex(raw: str) -> str:
    """LaTeX and markdown dressing off an answer: boxes, \\text{}, \\$, \\%, {,}, thin spaces, math delimiters."""
    text = _unbox(raw)
    for _ in range(3):  # nested \text{\textbf{...}}
        text = _TEXT_CMD_RE.sub(r" \1 ", text)
    text = (text.replace("\\$", "$").replace("\\%", "%").replace("{,}", ",").replace("\\!", "")
            .replace("\\,", "").replace("\\;", " ").replace("\\:", " ").replace("\\ ", " ").replace("~", " ")
            .replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
            .replace("^\\circ", "").replace("^{\\circ}", "").replace("\u2212", "-").replace("\\displaystyle", ""))
    text = re.sub(r"\\[()\[\]]", " ", text)  # \( \) \[ \]
    text = re.sub(r"\$(?!\s*-?\d)", " ", text)  # math $ (a currency $ is followed by a number)
    text = text.replace("**", "").replace("__", "")
    return " ".join(text.split())


def parse_number(raw: str) -> Fraction | None:
    """The answer's number as an exact Fraction: handles $, commas, units, %, a/b, \\frac{a}{b}, `5 + 3 = 8`
    (the value after the last `=`), mixed numbers (`2\\frac{1}{2}`) and number words (`three hundred`).
    A number fused with a variable (`2X`, `3x`) is not a number."""
    if _PLAIN_NUMBER_RE.fullmatch(raw):  # most answers and golds: nothing to clean, the same value
        return Fraction(raw) if "." in raw else Fraction(int(raw))  # an int skips Fraction's string parser
    text = clean_latex(raw)
    if "=" in text and not re.search(r"[A-Za-z]{3,}", re.sub(r"\\[a-zA-Z]+", "", text.split("=", 1)[0])):
        text = text.rsplit("=", 1)[1]  # `5 + 3 = 8`, `x = 5`; not `10 because ... = 6` (the 10 is stated)
    num_m = _NUMBER_RE.search(text)
    if num_m and re.match(r"[xXyYnN]\b", text[num_m.end():]):
        return None  # `2X`, `3x`: an expression in a variable, not a number
    frac_m = _FRAC_RE.search(text)
    if frac_m:
        before = _BEFORE_FRAC_RE.search(text[max(0, frac_m.start() - 24) : frac_m.start()])
        sign, whole = (before.group(1), before.group(2)) if before else (None, None)
        if num_m is None or num_m.start() >= frac_m.start() - (len(before.group(0)) if before else 0):
            num, den = parse_number(frac_m.group(1)), parse_number(frac_m.group(2))
            if num is not None and den:
                value = num / den + (int(whole) if whole else 0)
                return -value if sign else value
    if not num_m:
        words = _WORD_NUMBER_RE.match(text)
        return Fraction(_words_to_number(words.group(1))) if words else None
    token = num_m.group(0).replace("$", "").replace(",", "").replace(" ", "")
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
    words = re.findall(r"[a-z]+", clean_latex(raw).lower())
    for word in words[:3]:
        if word in _YES_NO:
            return _YES_NO[word]
    return None


def parse_choice(raw: str) -> str | None:
    """A multiple-choice letter: 'B', '(b)', 'B)', 'option B', 'B. Paris'."""
    m = re.match(r"^\s*(?:option\s+|\()?([A-Ea-e])(?:\)|\.|:|\s|$)", clean_latex(raw))
    return m.group(1).upper() if m else None


def normalize_text(raw: str) -> str:
    raw = " ".join(raw.lower().translate(str.maketrans("", "", string.punctuation)).split())
    # Articles are noise around an answer ("the Nile" = "Nile"), but a text that is only articles
    # ("A", "the") is itself the answer: it must never normalise to nothing.
    stripped = " ".join(re.sub(r"\b(a|an|the)\b", " ", raw).split())
    return stripped or raw


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
    text = normalize_text(clean_latex(raw))
    return text or None


# ---------------------------------------------------------------------------------------------
# Finding the stated final answer
# ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Statement:
    start: int  # where the statement begins: the rationale is the text before it
    at: int  # where its value is: the latest value wins
    raw: str


_NUM = r"(?:\$\s{0,3})?(?:-\s{0,3})?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:\s{0,3}/\s{0,3}\d+)?"
# A value after `####`: a number (with up to four lowercase unit words), a box, math, yes/no, a letter.
_HASH_VALUE_RE = re.compile(
    r"^(?:\\?" + _NUM + r"(?:\s{0,3}(?:\\?%|[a-z][a-z.\-]*(?:\s{1,3}[a-z][a-z.\-]*){0,3}))?"
    r"|\\boxed.*|\$.*\$|\\\(.*|yes|no|true|false|\(?[A-E]\)?)(?:\s{0,3}[.!])?$",
    re.I,
)
_HASHES_RE = re.compile(r"(?<!#)####(?!#)[ \t]*\**[ \t]*([^\n]*)")
_PHRASE_RE = re.compile(
    r"\b(?:(?:the\s+)?(?:correct\s+|final\s+)?answer(?:\s+to\s+(?:the|this|our)\s+(?:question|problem))?)"
    r"[*_]*[ \t]*(?:is|would\s+be|will\s+be|should\s+be|=|:)[*_]*[ \t]*:?[*_]*[ \t]*",
    re.I,
)
_HEADING_RE = re.compile(
    r"^[ \t]{0,8}(?:(?:#+|\*\*)[ \t]{0,8})?(?:final[ \t]{1,3}answer|answer)(?::[ \t]{0,3})?(?:\*\*[ \t]{0,3})?:?[ \t]*$",
    re.I | re.M)
# `42 is the answer`, `... which is 6. This is the answer.`
_VALUE_IS_ANSWER_RE = re.compile(
    r"(?<![\w.,$])(" + _NUM + r"|yes|no)(?:\s+[a-z]+)?\s+is\s+(?:the|my|our)\s+(?:final\s+|correct\s+)?answer\b", re.I)
_THIS_IS_ANSWER_RE = re.compile(r"\b(?:this|that|which)\s+is\s+(?:the|my|our)\s+(?:final\s+|correct\s+)?answer\b", re.I)
_VALUE_BEFORE_RE = re.compile(
    r"(?:=|\bis\b|\bare\b|\bequals?\b|\bgives?\b|\bget\b|:)\s*(" + _NUM + r"(?:\s{1,3}[a-z]+){0,2})(?:\s{0,3}[.,;])?\s*$", re.I)
_BOX_AHEAD = re.compile(r"(?:[\s$*]|\\\[|\\\(){0,12}(\\(?:boxed|fbox))\s{0,3}(?=\{)")
# A phrase that mentions an answer without stating it.
_NOT_STATED_BEFORE = re.compile(
    r"\b(?:said|thought|guessed|assumed|assume|claimed|wrote|believed|initially|earlier|previously|at first|"
    r"mistakenly|if|whether|check|verify|confirm|suppose|not sure|unsure|can't|cannot|don't|doesn't)\b",
    re.I,
)
_NOT_A_VALUE = re.compile(
    r"^(?:not\b|n't|correct\b|incorrect|wrong|right\b|as follows|the following|following|below|"
    r"above|to\b|because|in\b|clear|obvious|simple|straightforward|calculated|found|given|determined|"
    r"obtained|derived|shown|based|unclear|unknown|hidden|different|the same|still|now\b|then\b|"
    r"X(?:\s*[,.;:\"\u201d)]|\s*$)|:?$)",  # `The answer is X.`: the prompt's placeholder, echoed
)
_NEGATED = re.compile(r"^(?:not\b|n't)", re.I)
_RETRACTED_AFTER = re.compile(r"\b(?:wrong|incorrect|a mistake|not right|not correct)\b", re.I)
_LEAD_ADVERB = re.compile(r"^(?:therefore|thus|so|then|simply|just|clearly|indeed|actually|finally),?\s+", re.I)
_PLEASANTRY = re.compile(
    r"^(?:i hope (?:this|that) helps|hope (?:this|that) helps|let me know|feel free|good luck|happy to help|"
    r"i hope this|thank you|thanks)\b", re.I)
_LAST_LINE_VALUE_RE = re.compile(
    r"^(?:" + _NUM + r"|(?:-\s?)?(?:\d+\s?)?\\frac\s?\{[^{}]+\}\s?\{[^{}]+\})"
    r"(?:\s?(?:%|[a-z]+(?:\s[a-z]+){0,3}))?(?:\s?[.!])?$",
    re.I,
)
_LAST_LINE_MAX_WORDS = 12
# A sentence that opens with yes/no: `Yes, because ...`, `No.`, `So, no.`, `A: Yes, ...`, `: "Yes, but ..."`.
_YES_NO_SENTENCE = re.compile(
    r"(?:^|(?<=[.!?:]))[ \t*_#>\"\u201c]{0,8}(?:A:[ \t*_]{0,4})?(?:(?:so|thus|therefore|hence),?[ \t]{1,3})?"
    r"(yes|no)\b[*_\"\u201d]{0,4}(?=[ \t]{0,3}(?:[,.!;:\u2014-]|because\b|$))",
    re.I | re.M,
)


def _clause_start(text: str, at: int) -> int:
    """Where the clause around `at` begins (after the last sentence end, line break, comma or colon)."""
    lo = max(0, at - 300)
    cut = max(lo - 1, text.rfind("\n", lo, at), *(text.rfind(p, lo, at) for p in (". ", "! ", "? ", ",", ";", ":")))
    return cut + 1


def _quoted_mention(text: str, at: int) -> bool:
    """A phrase quoted inside a sentence (`of the form "The answer is X."`) mentions, not states."""
    if at == 0 or text[at - 1] not in "\"\u201c'":
        return False
    line = text[max(text.rfind("\n", 0, at), at - 300) + 1 : at - 1]
    return bool(re.search(r"[A-Za-z]", line))


def _phrase_value(text: str, start: int) -> tuple[int, str] | None:
    """The value after an answer phrase: to the end of its sentence, or the next line after a bare `Answer:`."""
    line_end = text.find("\n", start, start + 500)  # a value is at most a few hundred characters
    line_end = min(len(text), start + 500) if line_end < 0 else line_end
    rest = text[start:line_end]
    if not rest.strip(" \t*_:"):
        m = re.match(r"\s*\n([^\n]*\S[^\n]*)", text[line_end : line_end + 500])
        if not m:
            return None
        return line_end + m.start(1), m.group(1).strip()
    box = _BOX_AHEAD.match(rest)
    if box:  # `Answer: $\boxed{42}$`: the box is the value, the phrase starts the statement
        group = _braced(text, start + box.end())
        if group:
            return start + box.start(1), text[start + box.start(1) : group[0]]
    end = re.search(r"\.(?=\s|$)|[!?](?=\s|$)|\n|$", rest)
    return start, rest[: end.start() if end else len(rest)]


def _statements(text: str) -> tuple[list[_Statement], bool]:
    """Every explicit answer statement, and whether some phrase negates an answer (`the answer is not ...`)."""
    found: list[_Statement] = []
    negated = False
    for m in re.finditer(r"\\(?:boxed|fbox)\s*(?=\{)", text):
        group = _braced(text, m.end())
        if group is None:
            continue
        opener = re.search(r"(?:(?:\$|\\\[|\\\()[ \t]*)+$", text[max(0, m.start() - 16) : m.start()])
        start = m.start() - (len(opener.group(0)) if opener else 0)  # `$\boxed`: the `$` opens the statement
        found.append(_Statement(start, m.start(), group[1]))
    for m in _HASHES_RE.finditer(text):
        value = m.group(1).strip().strip("*").strip()
        if _HASH_VALUE_RE.match(value):
            box = _BOX_AHEAD.match(text, m.start(1))
            found.append(_Statement(m.start(), box.start(1) if box else m.start(1), value))
    for m in _PHRASE_RE.finditer(text):
        before = text[_clause_start(text, m.start()) : m.start()]
        if _NOT_STATED_BEFORE.search(before) or _quoted_mention(text, m.start()):
            continue
        parsed = _phrase_value(text, m.end())
        if parsed is None:
            continue
        at, value = parsed
        value = _LEAD_ADVERB.sub("", value.strip().strip("*_").strip())
        if _NOT_A_VALUE.match(value) or _RETRACTED_AFTER.search(value):
            negated = negated or bool(_NEGATED.match(value))
            continue
        start = m.start()
        if start > 0 and text[start - 1] in "*_":  # **Answer:** 42
            start = len(text[:start].rstrip("*_"))
        found.append(_Statement(start, at, value))
    for m in _HEADING_RE.finditer(text):
        nxt = re.match(r"\s*\n([^\n]*\S[^\n]*)", text[m.end() : m.end() + 500])
        if nxt:
            at = m.end() + nxt.start(1)
            box = _BOX_AHEAD.match(text, at)
            found.append(_Statement(m.start(), box.start(1) if box else at, nxt.group(1).strip()))
    for m in _VALUE_IS_ANSWER_RE.finditer(text):
        found.append(_Statement(m.start(), m.start(1), m.group(1)))
    for m in _THIS_IS_ANSWER_RE.finditer(text):
        value = _VALUE_BEFORE_RE.search(text, max(0, m.start() - 200), m.start())
        if value:
            found.append(_Statement(m.start(), value.start(1), value.group(1)))
    return found, negated


def _last_line_equation(text: str) -> _Statement | None:
    """A short last line `Total = 5 + 3 = 8` (pleasantries after it aside): the value after the last `=`."""
    lines, offset = [], 0
    for line in text.split("\n"):
        if line.strip():
            lines.append((offset, line))
        offset += len(line) + 1
    while lines and _PLEASANTRY.match(lines[-1][1].strip(" *_")):
        lines.pop()
    if not lines:
        return None
    offset, line = lines[-1]
    plain = re.sub(r"\\[()\[\]]|\$(?!\s*-?\d)|\*\*", " ", line)
    if "=" not in plain or "==" in plain or len(plain.split()) > _LAST_LINE_MAX_WORDS:
        return None
    value = plain.rsplit("=", 1)[1]
    if not _LAST_LINE_VALUE_RE.match(clean_latex(value)):
        return None
    return _Statement(offset, offset + len(line), value.strip())


def _tidy(raw: str) -> str:
    raw = raw.strip()
    if re.search(r"\\(?:boxed|fbox)\s*\{", raw):
        raw = _unbox(raw)
    raw = raw.strip().strip("*").strip().strip("\"\u201c\u201d").strip()
    if raw.startswith("$") and raw.count("$") >= 2:
        raw = re.sub(r"^\$+\s*(.*?)\s*\$+$", r"\1", raw)
    return raw.rstrip(".,;!").strip()


def split_answer(text: str) -> tuple[str, str | None]:
    """Split a completion into (rationale, raw final answer); the answer is None when none is stated.

    The statement whose value comes last wins (models restate and correct earlier guesses). See the
    module docstring for the forms understood.
    """
    found, negated = _statements(text)
    if found:
        # A phrase or heading that introduces a box ties with the box and, starting earlier, takes
        # the statement's start (so the rationale ends before `Final Answer:`).
        best = max(found, key=lambda s: (s.at, -s.start))
        return text[: best.start].strip(), _tidy(best.raw) or None
    stated = _last_line_equation(text)
    if stated is not None:
        return text[: stated.start].strip(), _tidy(stated.raw) or None
    sentences = list(_YES_NO_SENTENCE.finditer(text))
    if sentences and not negated:
        last = sentences[-1]
        if last.start() == 0 or not text[: last.start()].strip():  # the reply opens with it: the rest is the why
            return text[last.end():].lstrip(" \t,.!;:\u2014-*_\"").strip(), last.group(1)
        return text[: last.start()].strip(), last.group(1)
    return text.strip(), None


# ---------------------------------------------------------------------------------------------
# Gold answers
# ---------------------------------------------------------------------------------------------

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


_LETTER_GOLD_RE = re.compile(r"^\s*\(?([A-Ea-e])\)?\s*\.?\s*$")
# Lettered options in a question: "(A) red ball", "A) red", "A. red", "A: red", at a line start or after a space.
_OPTION_RE = re.compile(r"(?:^|[\s:])\(?([A-E])(?:\)|\.|:)\s*\S", re.M)


def lists_options(question: str | None, letter: str) -> bool:
    """Whether `question` lists lettered options (at least two, `letter` among them)."""
    if not question:
        return False
    found = {m.group(1) for m in _OPTION_RE.finditer(question)}
    return len(found) >= 2 and letter.upper() in found


def infer_answer_type(gold: object, question: str | None = None) -> str:
    """The answer type a gold implies; a bare letter ('A', '(b)') is a `choice` when the question lists
    lettered options (a multiple-choice data set), else text."""
    if isinstance(gold, str):
        letter = _LETTER_GOLD_RE.match(gold)
        if letter and lists_options(question, letter.group(1)):
            return "choice"
    if isinstance(gold, bool):
        return "yes_no"
    if isinstance(gold, (int, float)):
        return "number"
    if gold is None:
        return "text"
    text = str(gold)
    _, stated = split_answer(text)
    return _type_of(stated if stated is not None else text)


def _type_of(probe: str) -> str:
    if _PLAIN_NUMBER_RE.fullmatch(probe):  # `72`, `-3.5`: no words, so never yes/no
        return "number"
    if parse_yes_no(probe) is not None and len(probe.split()) <= 2:
        return "yes_no"
    if parse_number(probe) is not None and len(probe.split()) <= 4:
        return "number"
    return "text"


def gold_answer(value: object, answer_type: str, question: str | None = None) -> tuple[str, str | None]:
    """A seed's answer type (inferred when "auto") and canonical gold: `infer_answer_type` then
    `canonical_gold`, with a written solution (`... #### 42`) read once instead of twice."""
    if (answer_type != "auto" or value is None or isinstance(value, (bool, int, float))
            or _LETTER_GOLD_RE.match(str(value))):  # a bare letter: a choice or text, by its question
        kind = infer_answer_type(value, question) if answer_type == "auto" else answer_type
        return kind, canonical_gold(value, kind)
    text = str(value)
    _, stated = split_answer(text)
    probe = stated if stated is not None else text
    kind = _type_of(probe)
    return kind, canonical(probe, kind)


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL_RE.match(text))


def answers_match(answer: str | None, gold: str | None) -> bool:
    """Both sides already canonical for the same answer type."""
    return answer is not None and gold is not None and answer == gold


# ---------------------------------------------------------------------------------------------
# Symbolic equivalence (math-verify in a worker process) and the grading rule
# ---------------------------------------------------------------------------------------------

SYMBOLIC_DEADLINE = 3.0
"""Seconds one symbolic comparison may take, wall clock, before its worker is killed (start-up excluded)."""
_WORKER_START_TIMEOUT = 60.0
_PLAIN_VALUE_RE = re.compile(
    r"^" + _NUM + r"(?:\s?%)?(?:\s[a-zA-Z][a-zA-Z.]*){0,4}$"
    r"|^(?:-\s?)?\\frac\s?\{\s?\d+\s?\}\s?\{\s?\d+\s?\}$"
)
_SYMBOLIC = re.compile(r"\\[a-zA-Z]|\^|sqrt|\bpi\b|[{}]")


def looks_symbolic(*texts: str | None) -> bool:
    """Whether any text is mathematics that canonical() cannot settle (not a plain number, fraction or word)."""
    for t in texts:
        if t is None:
            continue
        plain = clean_latex(t)
        if plain and not _PLAIN_VALUE_RE.match(plain) and _SYMBOLIC.search(plain):
            return True
    return False


_WORKER_CODE = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from distilforge.core.grading import _serve; _serve(int(sys.argv[2]), int(sys.argv[3]))"
)


def _serve(read_fd: int, write_fd: int) -> None:
    """The math-verify worker process. math-verify runs on this process's main thread, where its
    SIGALRM timeouts work; the parent's deadline covers whatever they cannot interrupt."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    parent = os.getppid()

    def orphaned() -> None:  # the parent died without closing us (SIGKILL): leave too
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=orphaned, daemon=True).start()
    try:
        from math_verify import parse, verify
    except ImportError:
        replies.send("unavailable")
        return
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    replies.send("ready")
    while True:
        try:
            gold, answer, seconds = requests.recv()
        except (EOFError, OSError):
            return
        try:
            g = parse(f"${gold}$", parsing_timeout=seconds)
            a = parse(f"${answer}$", parsing_timeout=seconds)
            equal = bool(g and a and verify(g, a, timeout_seconds=seconds))
        except Exception:
            equal = False
        replies.send(equal)


class _MathVerifyWorker:
    """One lazily started worker process, used by one caller at a time (a lock queues the others).

    The worker is a fresh interpreter (`python -c`), like multiprocessing's spawn, but without spawn's
    re-import of the caller's `__main__` (which re-runs a script that lacks an `if __name__` guard).
    A comparison that passes its deadline kills the worker; the next comparison starts a fresh one.
    """

    def __init__(self) -> None:
        self._reset()
        self.unavailable = importlib.util.find_spec("math_verify") is None
        self.kills = 0  # workers killed (deadline passed or worker broken)

    def _reset(self) -> None:
        """Fresh state; also in a forked child, which must not share its parent's worker or lock."""
        self._lock = threading.Lock()
        self._proc: Any = None
        self._requests: Any = None
        self._replies: Any = None

    def _start(self) -> None:
        import json
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, json.dumps(sys.path), str(child_read), str(child_write)],
                pass_fds=(child_read, child_write), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            os.close(child_read)
            os.close(child_write)
        self._requests = Connection(parent_write, readable=False)
        self._replies = Connection(parent_read, writable=False)
        if not self._replies.poll(_WORKER_START_TIMEOUT):
            raise TimeoutError(f"no sign of life in {_WORKER_START_TIMEOUT:.0f}s")
        if self._replies.recv() != "ready":
            raise RuntimeError("math-verify is not installed")

    def _kill(self) -> None:
        proc, connections = self._proc, (self._requests, self._replies)
        self._proc = self._requests = self._replies = None
        for conn in connections:
            if conn is not None:
                conn.close()
        if proc is not None:
            proc.kill()
            proc.wait(5)
            self.kills += 1

    def compare(self, gold: str, answer: str, deadline: float) -> bool:
        with self._lock:
            if self.unavailable:
                return False
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                try:
                    self._start()
                except Exception as exc:  # no interpreter to run, math-verify missing, ...
                    log.warning("math-verify worker would not start (%s); symbolic answers count as not equal", exc)
                    self._kill()
                    self.unavailable = True
                    return False
            try:
                # math-verify's own alarms (whole seconds) end ordinary slow cases inside the worker;
                # the deadline covers what they cannot interrupt (long C calls, many comparisons).
                self._requests.send((gold, answer, max(1, int(deadline) - 1)))
                if self._replies.poll(deadline):
                    return bool(self._replies.recv())
                log.warning("math-verify took over %.1fs on %r vs %r; counted as not equal", deadline,
                            answer[:80], gold[:80])
            except Exception as exc:  # the worker died: not equal, never a crash
                log.warning("math-verify worker failed (%s); counted as not equal", exc)
            self._kill()
            return False

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _MathVerifyWorker()
atexit.register(_WORKER.close)


def symbolic_equal(gold: str, answer: str, *, deadline: float = SYMBOLIC_DEADLINE) -> bool:
    """LaTeX / symbolic equivalence with math-verify (e.g. \\frac{\\sqrt{2}}{2} = 1/\\sqrt{2}).

    Runs in a worker process with a hard wall-clock `deadline` (seconds, worker start-up excluded):
    past it the worker is killed and the answer counts as not equal. Safe from any thread; callers
    queue for the one worker. Verdicts are remembered, so a pathological answer costs its deadline once.
    """
    key = (gold, answer, deadline)
    with _VERDICTS_LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key]
    started = time.monotonic()
    equal = _WORKER.compare(gold, answer, deadline)
    log.debug("symbolic_equal %r %r -> %s in %.2fs", gold, answer, equal, time.monotonic() - started)
    with _VERDICTS_LOCK:
        if len(_VERDICTS) >= 4096:
            _VERDICTS.pop(next(iter(_VERDICTS)))
        _VERDICTS[key] = equal
    return equal


_VERDICTS: dict[tuple[str, str, float], bool] = {}
_VERDICTS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A forked child gets its own worker and unlocked locks (the parent's threads are not there)."""
    global _VERDICTS_LOCK
    _WORKER._reset()
    _VERDICTS_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def grade(raw_answer: str | None, gold: str | None, answer_type: str, gold_raw: str | None = None) -> bool:
    """Whether a stated answer is correct: the one rule used by filters, sampling, voting and evaluation.

    `raw_answer` as `split_answer` returns it, `gold` canonical (`canonical_gold`), `gold_raw` the gold's
    stated text when there is one (for symbolic comparison). Canonical equality first; then, for number
    and text answers where either side is mathematics canonical() cannot settle, math-verify
    equivalence under a hard deadline. Plain numbers, yes/no and letters never reach math-verify.
    """
    if raw_answer is None or gold is None:
        return False
    if canonical(raw_answer, answer_type) == gold:
        return True
    if answer_type not in ("number", "text"):
        return False
    reference = gold_raw if gold_raw else gold
    if not looks_symbolic(raw_answer, reference):
        return False
    return symbolic_equal(_math(reference), _math(raw_answer))


def _math(raw: str) -> str:
    """An answer as math-verify reads it inside `$...$`: no currency or math-mode dollars."""
    return _unbox(raw).replace("\\$", "").replace("$", "").strip()
