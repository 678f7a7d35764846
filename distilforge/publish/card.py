"""The dataset card (`DIR/dataset/README.md`): YAML metadata for the Hub, then provenance.

Everything comes from run.json and the config snapshot, which hold no secrets (only the *name* of
the key's environment variable, and base URLs without credentials); the card leaves even those out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distilforge import __version__
from distilforge.core.run_files import read_run, write_atomic
from distilforge.prompts import template_hash
from distilforge.schemas import JobConfig
from distilforge.teachers import display_model


def _filters_table(run: dict[str, Any]) -> str:
    lines = ["| step | in | out | rejected | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
    for f in run.get("filters", []):
        lines.append(f"| `{f['name']}` | {f['in']} | {f['out']} | {f['in'] - f['out']} | {f['seconds']} |")
    return "\n".join(lines)


def card_text(config: JobConfig, run: dict[str, Any], splits: dict[str, int]) -> str:
    g, t = config.generation, config.teacher
    meta = {
        "license": config.output.license,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["distillation", "synthetic", "distilforge", g.mode],
        "size_categories": ["n<1K" if sum(splits.values()) < 1000 else "1K<n<10K" if sum(splits.values()) < 10_000
                            else "10K<n<100K" if sum(splits.values()) < 100_000 else "100K<n<1M"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": name, "path": f"data/{name}.parquet"} for name in splits]}],
    }
    params = t.params.model_dump(mode="json", exclude_none=True, exclude={"extra_body"})
    decontam = [f for f in run.get("filters", []) if f["name"] == "decontaminate"]
    cost = run.get("cost_usd")
    tokens = run.get("tokens", {})
    body = f"""# {config.name or 'distilforge dataset'}

Distilled from a teacher model by black-box knowledge distillation with
[distilforge](https://pypi.org/project/distilforge/) {__version__} (mode `{g.mode}`).

## Splits

{chr(10).join(f"- `{name}`: {n} rows" for name, n in splits.items())}

The split is by seed, never by row: every sample of a seed is on the same side. A seed goes to
`validation` when a stable hash of its `seed_id` (salted with `generation.rng_seed`
= {g.rng_seed}) falls below `output.validation_fraction` = {config.output.validation_fraction}
(no validation below 20 rows), so no validation question is one the student trained on.

Each row has `messages` (chat format, ready for TRL's `SFTTrainer`) and its provenance: `seed_id`,
`question`, `rationale`, `answer`, `gold`, `teacher_model`, `mode`, `template`, `template_sha`, token counts,
and `round` (0: the first pass; N: the targeted round that asked for it).

## Teacher

- backend `{t.backend}`, model `{display_model(t)}`
- sampling: `{params}`
- samples per seed: {g.samples_per_seed}; keep: `{g.keep}`; self-consistency: {g.self_consistency}

## Prompt

- template `{g.template_name}` (sha256 prefix `{template_hash(g.template_name)}`)

## Seeds

- source: `{Path(config.seeds.path).name}` ({run.get('seeds', {}).get('count', '?')} seeds)
- license: {config.seeds.license or 'see the source'}

## Filtering

{run.get('kept', 0)} kept of {run.get('samples', {}).get('expected', '?')} samples. Every step, in order:

{_filters_table(run)}

Rejected rows by reason: {', '.join(f'{k} {v}' for k, v in sorted(run.get('rejected', {}).items())) or 'none'}.
"""
    if decontam:
        sets = decontam[0].get("per_eval_set", {})
        spec = next(f for f in config.filters if f.name == "decontaminate")
        body += (f"\n## Decontamination\n\nRows holding {spec.min_overlap:.0%} or more of an eval question's own "
                 f"{spec.ngram}-grams, against: "
                 + ", ".join(f"`{Path(s).name}`" for s in spec.eval_sets)
                 + f". Removed per eval set: {sets or 'none'}.\n")
    body += f"""
## Cost

- tokens: {tokens.get('prompt', 0)} prompt, {tokens.get('completion', 0)} completion
- teacher cost: {f'${cost:.4f}' if cost is not None else 'not priced'}
"""
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def write_card(config: JobConfig, run_dir: Path, counts: dict[str, int] | None = None) -> Path:
    if counts is None:
        import datasets

        counts = {name: len(split) for name, split in datasets.load_from_disk(str(run_dir / "dataset")).items()}
    path = run_dir / "dataset" / "README.md"
    write_atomic(path, card_text(config, read_run(run_dir), counts))
    return path
