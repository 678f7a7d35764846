"""How kept rows become training examples: plain chat, or distilling step-by-step (Hsieh et al. 2023).

Step-by-step turns each row into two tasks with distinct prefixes: `[label]` -> the final answer and
`[rationale]` -> the reasoning. `train.alpha` is the label task's share of the examples (the paper's
loss weight, applied by sampling: the rationale task is subsampled or repeated to match).
"""

from __future__ import annotations

import random
from typing import Any

from distilforge.core.reasoning import parse_think_turn

LABEL_PREFIX = "[label] "
RATIONALE_PREFIX = "[rationale] "


def chat_example(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def thinking_example(row: dict[str, Any], native: bool) -> dict[str, Any]:
    """`train.format: thinking`: the answer turn holds one think block. `native`: the student's chat template
    renders `reasoning_content` itself (Qwen3, SmolLM3), so the trace goes there and the answer in content."""
    example = chat_example(row)
    if native:
        trace, answer = parse_think_turn(example["completion"][0]["content"])
        example["completion"] = [{"role": "assistant", "content": answer, "reasoning_content": trace or ""}]
    return example


def step_by_step_examples(rows: list[dict[str, Any]], alpha: float, seed: int) -> list[dict[str, Any]]:
    label, rationale = [], []
    for row in rows:
        user = row["messages"][:-1]
        question = user[-1]["content"]
        answer = row.get("answer")
        if answer is None:
            continue  # instruction data has no label task
        label.append({"prompt": [*user[:-1], {"role": "user", "content": LABEL_PREFIX + question}],
                      "completion": [{"role": "assistant", "content": f"The answer is {answer}."}]})
        if row.get("rationale"):
            rationale.append({"prompt": [*user[:-1], {"role": "user", "content": RATIONALE_PREFIX + question}],
                              "completion": [{"role": "assistant", "content": row["rationale"]}]})
    rng = random.Random(seed)
    if label and rationale:
        # alpha = label / (label + rationale): draw the rationale task to that proportion.
        wanted = round(len(label) * (1 - alpha) / alpha)
        rationale = [rationale[i % len(rationale)] for i in range(wanted)] if wanted > len(rationale) \
            else rng.sample(rationale, wanted)
    examples = label + rationale
    rng.shuffle(examples)
    return examples
