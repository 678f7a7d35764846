"""Jinja2 prompt templates. Rendered without HTML autoescape so questions reach the teacher verbatim."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from distilforge.schemas import GenerationConfig
from distilforge.schemas.records import Seed

PROMPTS_DIR = Path(__file__).parent

ANSWER_HINTS = {
    "number": "a number",
    "yes_no": "yes or no",
    "choice": "the letter of the correct option",
    "text": "a short phrase",
}


@lru_cache(maxsize=32)
def _load(name: str) -> tuple[jinja2.Template, str]:
    # A bare name is a built-in template first: a file of that name in the working folder never
    # stands in for it (a service worker's folder holds no job's files, but a CLI user's might).
    builtin = PROMPTS_DIR / name
    path = builtin if ("/" not in name and builtin.is_file()) else Path(name) if Path(name).is_file() else builtin
    if not path.is_file():
        raise FileNotFoundError(f"prompt template '{name}' not found (looked in {PROMPTS_DIR})")
    text = path.read_text(encoding="utf-8")
    # Sandboxed: a template (a user's, too) can format its variables but not reach Python internals.
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False, undefined=jinja2.StrictUndefined)
    template = env.from_string(text)
    # A plain dict of the same globals: each render copies them, and copying a ChainMap costs more
    # than the rest of a short template's render.
    template.globals = dict(template.globals)
    return template, hashlib.sha256(text.encode()).hexdigest()[:16]


def render(name: str, **variables: object) -> str:
    template, _ = _load(name)
    return template.render(**variables).strip()


def template_hash(name: str) -> str:
    return _load(name)[1]


def build_messages(seed: Seed, generation: GenerationConfig, **extra: object) -> list[dict[str, str]]:
    """The teacher's chat messages for one seed: optional system prompt, the seed's context (openai-chat
    seeds: their system turns and earlier turns, in order), then the mode's template on the question.
    `generation.system_prompt` applies when the seed brings no system turn of its own."""
    if seed.messages is not None:
        return seed.messages
    content = render(
        generation.template_name,
        question=seed.question,
        instruction=seed.question,
        input=seed.input,
        answer_type=seed.answer_type,
        answer_hint=ANSWER_HINTS.get(seed.answer_type, "the final answer"),
        **extra,
    )
    context = seed.context or []
    messages = []
    if generation.system_prompt and not any(m["role"] == "system" for m in context):
        messages.append({"role": "system", "content": generation.system_prompt})
    messages += context
    messages.append({"role": "user", "content": content})
    return messages
