"""The job config: YAML in, a strict pydantic `JobConfig` out.

Strict means an unknown or mistyped key fails, naming the file, the line and the dotted path,
so a typo such as `temprature` never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from distilforge.schemas.base import ConfigError, KeyConflict, Strict
from distilforge.schemas.budget import BudgetConfig
from distilforge.schemas.evaluation import EvalConfig
from distilforge.schemas.executor import ExecutorConfig
from distilforge.schemas.filters import FilterSpec, ThinkingConfig
from distilforge.schemas.generation import GenerationConfig
from distilforge.schemas.loop import LoopConfig
from distilforge.schemas.output import OutputConfig
from distilforge.schemas.seeds import SeedsConfig
from distilforge.schemas.teacher import TeacherConfig
from distilforge.schemas.train import TrainConfig


class JobConfig(Strict):
    """A distilforge job file: seeds -> teacher -> filters -> dataset, then train, eval and publish."""

    name: str | None = Field(
        default=None, description="the run's name: the card's title, run.json's name and the default run "
                                  "folder runs/NAME (default: the config file's name)")
    seeds: SeedsConfig = Field(description="the questions (or tasks) the teacher answers")
    teacher: TeacherConfig = Field(
        default=TeacherConfig(), description="the model that answers: backend openai, vllm, vllm-offline or "
                                             "local, with its request parameters")
    generation: GenerationConfig = Field(
        default=GenerationConfig(), description="how seeds become teacher prompts (the mode) and which "
                                                "samples are kept")
    thinking: ThinkingConfig = Field(
        default=ThinkingConfig(), description="checks on a reasoning teacher's trace (records without one "
                                              "pass them)")
    budget: BudgetConfig = Field(default=BudgetConfig(), description="prices and the run folder's spending cap")
    train: TrainConfig = Field(
        default=TrainConfig(), description="whether and how the student is trained on the kept samples")
    eval: EvalConfig = Field(
        default=EvalConfig(), description="what the trained student (and optionally the teacher) is scored on")
    output: OutputConfig = Field(
        default=OutputConfig(), description="the run folder, the validation split, the dataset's license and "
                                            "where it is published")
    filters: list[FilterSpec] = Field(
        default_factory=list, description="quality filters run in order after the built-in checks, each "
                                          "chosen by its `name`")
    executor: ExecutorConfig = Field(
        default=ExecutorConfig(), description="where the ranks run: this process or a Ray cluster")
    loop: LoopConfig = Field(
        default=LoopConfig(), description="targeted rounds after the first pass (0 rounds: one pass)")

    @model_validator(mode="after")
    def _openai_needs_url_or_key(self) -> JobConfig:
        t = self.teacher
        if t.backend == "openai" and not t.base_url and not t.api_key_env:
            raise KeyConflict("teacher.api_key_env", "the openai backend needs base_url or api_key_env")
        if t.backend == "vllm" and not t.base_url:
            raise KeyConflict("teacher.backend", "the vllm backend needs teacher.base_url (the server's URL, or a list of replicas)")
        if t.batch_api and t.backend != "openai":
            raise KeyConflict("teacher.batch_api", "the Batch API needs backend: openai")
        if t.batch_api and self.executor.kind == "ray":
            raise KeyConflict("teacher.batch_api", "the Batch API runs in one process; use executor.kind local")
        if t.batch_api and self.generation.mode in ("self-instruct", "evol-instruct"):
            raise KeyConflict("teacher.batch_api", "self-instruct and evol-instruct decide each round from the last one")
        if self.loop.rounds:
            if not self.train.enabled:
                raise KeyConflict("loop.rounds", "targeted rounds train the student each round; set train.enabled")
            if self.generation.mode not in ("cot", "icl") or self.seeds.fields.answer is None:
                raise KeyConflict("loop.rounds", "the probe split needs questions with gold answers (mode cot or icl)")
        if self.generation.mode == "icl" and self.generation.icl.k >= 1 and self.generation.adaptive:
            raise KeyConflict("generation.adaptive", "works with cot only")
        return self


def job_schema() -> dict[str, Any]:
    """The job file's JSON Schema (draft 2020-12), so editors validate and complete job files."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **JobConfig.model_json_schema(), "title": "distilforge job file"}


# ---------------------------------------------------------------------------------------------
# Loading


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. teacher.params.temperature=0.2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return key.strip(), value


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on `loc`, so errors point into the file."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(part):
                    line, nxt = k.start_mark.line + 1, v
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config accepts beside the last part of `loc` (for 'did you mean')."""
    model: Any = JobConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        args = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else (
            args[0] if len(args) == 1 else None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.6) if loc else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_validation_error(exc: ValidationError, source: str, root: yaml.Node | None,
                            overrides: dict[str, str] | None = None) -> str:
    """One line per problem, blamed on the file's line, or on the `--set` that put the value there."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = "unknown key" + _did_you_mean(loc) if err["type"] == "extra_forbidden" else err["msg"]
        conflict = (err.get("ctx") or {}).get("error")
        if isinstance(conflict, KeyConflict):  # blame the key it names, at its own line
            loc, msg = loc + conflict.path, conflict.detail
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "missing":
            msg = "required key is missing"
        given = next((text for key, text in (overrides or {}).items()
                      if dotted == key or dotted.startswith(key + ".")), None)
        if given is not None:
            lines.append(f"--set {given}: {dotted}: {msg}")
            continue
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {dotted}: {msg}")
    return "\n".join(lines)


PACKAGED = "distilforge://"
PACKAGED_ROOT = Path(__file__).resolve().parents[1] / "data"


def packaged_path(uri: str) -> str:
    """`distilforge://demo/seeds.jsonl` -> the file shipped in the package, so a config works anywhere."""
    rest = uri[len(PACKAGED):].strip("/")
    target = (PACKAGED_ROOT / rest).resolve()
    if PACKAGED_ROOT not in target.parents or not target.is_file():
        known = ", ".join(f"{PACKAGED}demo/{p.name}" for p in sorted((PACKAGED_ROOT / "demo").glob("*.jsonl")))
        raise ConfigError(f"{uri}: no such packaged file (known: {known})")
    return str(target)


def resolve_paths(config: JobConfig, base: Path) -> JobConfig:
    """Relative file paths in a config are relative to the config file, not the shell's cwd;
    `distilforge://demo/...` names a file shipped with distilforge."""

    def fix(p: str) -> str:
        if p.startswith(PACKAGED):
            return packaged_path(p)
        candidate = base / p
        return str(candidate) if not Path(p).is_absolute() and candidate.exists() else p

    config.seeds.path = fix(config.seeds.path)
    for f in config.eval.files:
        f.path = fix(f.path)
    if config.generation.icl.pool:
        config.generation.icl.pool = fix(config.generation.icl.pool)
    for spec in config.filters:
        if spec.name == "decontaminate":
            spec.eval_sets = [fix(s) for s in spec.eval_sets]
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (seeds:, teacher:, ...)")
    given: dict[str, str] = {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        given[key] = item
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), root, given)) from None
    return resolve_paths(config, path.parent)
