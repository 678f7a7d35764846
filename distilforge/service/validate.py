"""A job submitted over the API is untrusted input: check every path, URL, key variable and repo.

Paths must resolve (symlinks followed) inside the data roots; teacher URLs must start with an
allowed prefix, or the server could be made to call internal addresses; key variables must be
allowed ones, or a job could send any server secret to a host of its choosing; Hub repos must be
allowed. Each problem is reported with the config's dotted path.
"""

from __future__ import annotations

from pathlib import Path

from distilforge.core.config import JobConfig, TeacherConfig
from distilforge.prompts import PROMPTS_DIR
from distilforge.service.settings import Settings


def _inside(path: str, roots: list[Path]) -> bool:
    resolved = Path(path).expanduser().resolve()  # follows symlinks and '..'
    return any(resolved == root or root in resolved.parents for root in roots)


def _teacher(prefix: str, teacher: TeacherConfig, settings: Settings, errors: list[tuple[str, str]]) -> None:
    if teacher.backend in ("local", "vllm-offline"):
        if Path(teacher.model).expanduser().exists() and not _inside(teacher.model, settings.data_roots):
            errors.append((f"{prefix}.model", "model path outside the data roots"))
        return
    urls = teacher.base_urls or ["https://api.openai.com/v1"]
    for i, url in enumerate(urls):
        if not any(url.startswith(allowed) for allowed in settings.allowed_teachers):
            where = f"{prefix}.base_url" + (f".{i}" if len(urls) > 1 else "")
            errors.append((where, f"{url} is not an allowed teacher endpoint (DISTILFORGE_ALLOWED_TEACHERS)"))
    if teacher.api_key_env is not None and teacher.api_key_env not in settings.teacher_key_envs:
        errors.append((f"{prefix}.api_key_env",
                       f"{teacher.api_key_env} is not an allowed key variable (DISTILFORGE_TEACHER_KEY_ENVS)"))


def check_job(config: JobConfig, settings: Settings) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    roots = settings.data_roots

    def path(where: str, value: str | None, must_exist: bool = False) -> None:
        if value is None:
            return
        if "/" in value and value.count("/") == 1 and not value.startswith((".", "/", "~")) and not Path(value).exists():
            errors.append((where, "Hub datasets are not fetched by the service; give a file under the data roots"))
        elif not _inside(value, roots):
            errors.append((where, f"{value} is outside the data roots"))
        elif must_exist and not Path(value).exists():
            errors.append((where, f"{value} does not exist"))

    path("seeds.path", config.seeds.path, must_exist=True)
    path("generation.icl.pool", config.generation.icl.pool)
    template = config.generation.template
    if template is not None and (("/" in template or "\\" in template) or not (PROMPTS_DIR / template).is_file()):
        # Built-in templates by name only: a path would let a job read any file the server can.
        errors.append(("generation.template", f"{template!r} is not one of the built-in templates"))
    path("output.dir", config.output.dir)
    for i, f in enumerate(config.eval.files):
        path(f"eval.files.{i}.path", f.path)
    if Path(config.train.student).expanduser().exists():
        path("train.student", config.train.student)
    if config.train.gkd.teacher and Path(config.train.gkd.teacher).expanduser().exists():
        path("train.gkd.teacher", config.train.gkd.teacher)
    _teacher("teacher", config.teacher, settings, errors)
    for i, spec in enumerate(config.filters):
        if spec.name == "judge":
            _teacher(f"filters.{i}.teacher", spec.teacher, settings, errors)
        if spec.name == "decontaminate":
            for j, source in enumerate(spec.eval_sets):
                path(f"filters.{i}.eval_sets.{j}", source)
    if config.output.hub_repo and config.output.hub_repo not in settings.hub_repos:
        errors.append(("output.hub_repo", f"{config.output.hub_repo} is not an allowed repo (DISTILFORGE_HUB_REPOS)"))
    return errors
