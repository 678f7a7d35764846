"""The `distilforge` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from distilforge import __version__

app = typer.Typer(
    name="distilforge",
    help="Distil a teacher LLM into a trained, evaluated student: seeds -> teacher -> filters -> dataset -> SFT -> eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _plain_help() -> None:
    """--help shows a flag as `--json`, not `--json <bool>`, and arguments as RUN_DIR, not {run_dir}."""
    from typer import core

    option_type = getattr(core.TyperOption, "display_type_rich", None)
    if option_type is not None:
        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if self.is_flag else option_type(self, ctx)

        core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    if hasattr(core.TyperArgument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = self.display_name_raw.upper()
            return (name if self.required else f"[{name}]") + ("..." if self.nargs != 1 else "")

        core.TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


_plain_help()


def _version(value: bool) -> None:
    if value:
        print(f"distilforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Distil a teacher LLM into a trained, evaluated student: seeds -> teacher -> filters -> dataset -> SFT -> eval."""

ConfigArg = Annotated[Path, typer.Argument(help="Job config (YAML), or an existing run folder to continue.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: output.dir, else runs/NAME).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set teacher.params.temperature=0.2")]
ExecutorOpt = Annotated[str | None, typer.Option(
    "--executor", help="Where the ranks run: local, or ray (a local Ray unless executor.address); --executor ray:4 "
                       "for 4 ranks.")]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder written by `distilforge run` or `generate`.")]


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-shard bars only add noise."""
    import os

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not sys.stderr.isatty():
        # In a log a carriage-return bar (transformers' GGUF dequantizing uses plain tqdm) is garbage;
        # our own stages print a line every 10 s instead.
        os.environ.setdefault("TQDM_DISABLE", "1")
        if "transformers" in sys.modules:  # imported already: its bars read the variable at import
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    import warnings

    # Deprecations inside the libraries (transformers 5 renames gradient_checkpointing and TRL still passes
    # the old name, ...) are not the user's concern, and would print on every run.
    warnings.filterwarnings("ignore", category=FutureWarning,
                            module=r"(transformers|trl|peft|accelerate|datasets|torch|huggingface_hub)(\..*)?$")


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(config_path: Path, overrides: list[str] | None, output: Path | None) -> tuple[Any, Path]:
    import warnings

    from distilforge.core.run_files import load_run_config
    from distilforge.schemas import RenamedKey, load_config

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RenamedKey)
        config = load_run_config(config_path, overrides) if config_path.is_dir() else load_config(config_path, overrides)
    for hint in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, RenamedKey)):
        console.print(f"[yellow]warning:[/yellow] {hint}", highlight=False, soft_wrap=True)
    for other in (w for w in caught if not issubclass(w.category, RenamedKey)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if config_path.is_dir():
        return config, output or config_path
    run_dir = output or (Path(config.output.dir) if config.output.dir else Path("runs") / (config.name or config_path.stem))
    return config, run_dir


def _guard(fn: Any) -> Any:
    """Known input errors become one clear line and exit code 2; Ctrl-C exits 130 with a resume hint."""
    from distilforge.core.budget import BudgetError
    from distilforge.core.redact import redact
    from distilforge.core.run_files import RunFolderBusy
    from distilforge.core.seeds import SeedError
    from distilforge.models import ModelError
    from distilforge.publish import PublishError, PublishInputError
    from distilforge.schemas import ConfigError
    from distilforge.teachers.base import TeacherError
    from distilforge.trainers.sft import TrainError

    _quiet_libraries()
    try:
        return fn()
    except (ConfigError, SeedError, ModelError, TeacherError, BudgetError, FileNotFoundError, TrainError,
            PublishInputError, RunFolderBusy) as exc:
        _fail(redact(str(exc)))
    except PublishError as exc:
        _fail(redact(f"publishing failed: {exc}"), code=1)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: paid responses are in the journal; rerun the same command to resume")
        raise typer.Exit(130) from None


def _executor_overrides(executor: str | None) -> list[str]:
    if executor is None:
        return []
    kind, _, workers = executor.partition(":")
    return [f"executor.kind={kind}", *([f"executor.workers={workers}"] if workers else [])]


def _need_run_dir(run_dir: Path) -> None:
    """train, eval, report, improve: a folder that is not there is named as a missing run folder."""
    if not run_dir.is_dir():
        _fail(f"{run_dir}: no such run folder (`distilforge run CONFIG --output {run_dir}` makes one)")
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "run.json").is_file():
        _fail(f"{run_dir}: not a run folder (no config.yaml or run.json in it)")


def _job(config: Path, set_: list[str] | None, output: Path | None, stages: tuple[str, ...], *,
         table: str | None = "run") -> None:
    """Load the config (or a run folder's), run `stages` through the one lifecycle, exit with its code.

    `table`: which table closes the command (`run`: the end-of-run table, `eval`: accuracy only)."""
    from rich.markup import escape

    from distilforge.pipeline.lifecycle import run_job
    from distilforge.report.terminal import print_eval, print_run_table

    def go() -> None:
        cfg, run_dir = _load(config, set_, output)
        result = run_job(cfg, run_dir, console=console, stages=stages)
        if table == "run":
            print_run_table(result.run, console)
        elif table == "eval":
            print_eval(result.run, console)
        if result.status == "interrupted":
            again = f"distilforge {'run' if 'train' in stages else 'generate'} {config} --output {run_dir}"
            console.print(f"[yellow]interrupted[/yellow]: paid responses are in the journal; rerun `{again}` to resume")
        elif result.status == "failed":
            error = result.run.get("error") or "no teacher request succeeded"
            lead = {"failed": "no teacher request succeeded; the first error: ",
                    "key_refused": "the teacher refused the key; stopped at once: "}.get(result.run.get("stopped"), "")
            console.print(f"[red]error:[/red] {escape(lead + error)}", highlight=False, soft_wrap=True)
        else:
            report = run_dir / "report.html"
            console.print(f"run folder: {run_dir}" + (f"; report: {report}" if report.exists() else ""))
        if result.exit_code:
            raise typer.Exit(result.exit_code)

    _guard(go)


@app.command()
def run(config: ConfigArg, output: OutputOpt = None, set_: SetOpt = None, executor: ExecutorOpt = None) -> None:
    """Run the whole job: generate -> filter -> dataset, then train -> eval if train.enabled -> report."""
    _job(config, [*(set_ or []), *_executor_overrides(executor)], output,
         ("generate", "train", "eval", "publish", "report"))


@app.command()
def generate(config: ConfigArg, output: OutputOpt = None, set_: SetOpt = None, executor: ExecutorOpt = None) -> None:
    """Only the data stage: seeds -> teacher -> filters -> DIR/dataset. Resumes an existing run folder."""
    _job(config, [*(set_ or []), *_executor_overrides(executor)], output, ("generate", "report"))


@app.command()
def improve(
    run_dir: RunDirArg,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Targeted rounds to run (all of them, whatever "
                                                               "the gain).")] = 1,
    probe: Annotated[Path | None, typer.Option("--probe", help="Held-out questions (the seeds' fields) to probe the "
                                                               "student with, when it trained on every seed.")] = None,
    set_: SetOpt = None,
) -> None:
    """Targeted rounds on a finished run: the student's probe mistakes get new teacher data, then it trains on.

    The probe is the run's own (loop.rounds), else the seeds the student never trained on, else --probe FILE.
    """
    _guard(lambda: _need_run_dir(run_dir))
    extra = [f"loop.probe_file={probe.resolve()}"] if probe else []
    _job(run_dir, [*(set_ or []), f"loop.rounds={rounds}", *extra], None, ("rounds", "report"))


@app.command()
def estimate(
    config: ConfigArg,
    set_: SetOpt = None,
    completion_tokens: Annotated[int | None, typer.Option(
        "--completion-tokens", help="Expected completion tokens per sample (default: half of max_tokens).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Expected and worst-case teacher cost of CONFIG, without sending a request."""
    import json

    from rich.table import Table

    from distilforge.pipeline.estimate import estimate_cost

    def go() -> None:
        cfg, _ = _load(config, set_, None)
        est = estimate_cost(cfg, completion_tokens)
        if as_json:
            print(json.dumps(est, indent=2))
            return
        table = Table(title=f"cost estimate: {est['model']}, {est['seeds']} seeds, {est['samples']} samples, "
                            f"{est['requests']} requests")
        for col in ("", "prompt tokens", "completion tokens", "USD"):
            table.add_column(col, justify="right")
        for name in ("expected", "worst_case"):
            row = est[name]
            usd = "-" if row["usd"] is None else f"${row['usd']:.4f}"
            table.add_row(name.replace("_", " "), f"{row['prompt_tokens']:,}", f"{row['completion_tokens']:,}", usd)
        Console().print(table)
        if est["prices"] is None:
            print("no price known for this model: set budget.prices to get dollars")
        else:
            print(f"prices from {est['prices_source']}: ${est['prices']['input_per_million']}/M input, "
                  f"${est['prices']['output_per_million']}/M output"
                  + (f", batch discount x{est['batch_discount']}" if est["batch_discount"] else ""))
        cap_name = "max_completion_tokens" if cfg.teacher.params.max_completion_tokens else "max_tokens"
        print(f"expected assumes {est['assumed_completion_tokens_per_sample']} completion tokens per sample; "
              f"worst case assumes every sample uses {cap_name} ({est['completion_cap_per_sample']:,})")
        if est["thinking"]:
            print(est["thinking"])
        if est["max_usd"] is not None and est["worst_case"]["usd"] is not None and est["worst_case"]["usd"] > est["max_usd"]:
            print(f"budget.max_usd ${est['max_usd']} is below the worst case: the run may stop early (stopped: budget)")

    _guard(go)


@app.command()
def publish(
    run_dir: RunDirArg,
    repo: Annotated[str | None, typer.Option("--repo", help="Dataset repository on the Hub, ORG/NAME.")] = None,
    model_repo: Annotated[str | None, typer.Option("--model-repo", help="Model repository for the student.")] = None,
    private: Annotated[bool, typer.Option("--private/--public", help="Create the repositories private.")] = True,
) -> None:
    """Push the dataset (Parquet + card) and/or the student (+ model card) to the Hub. Token: HF_TOKEN."""
    from distilforge.core.run_files import update_run
    from distilforge.publish import publish_dataset, publish_model

    def go() -> None:
        if not repo and not model_repo:
            _fail("give --repo ORG/NAME (dataset), --model-repo ORG/NAME (student), or both")
        if repo:
            result = publish_dataset(run_dir, repo, private=private)
            update_run(run_dir, published=result)
            console.print(f"published {', '.join(result['files'])} to {result['url']}")
        if model_repo:
            result = publish_model(run_dir, model_repo, private=private)
            update_run(run_dir, published_model=result)
            console.print(f"published the student ({len(result['files'])} files) to {result['url']}")

    _guard(go)


@app.command()
def export(
    run_dir: RunDirArg,
    format_: Annotated[str, typer.Option("--format", help="Export format: openai-chat (fine-tuning JSONL).")] = "openai-chat",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder (default: RUN_DIR/export/FORMAT).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Approximate token limit per example "
                                                                       "(4 characters a token).")] = 65_536,
    include_reasoning: Annotated[bool, typer.Option(
        "--include-reasoning", help="Put the teacher's thinking in the answer as <think>...</think> before it "
                                    "(default: the final answer only).")] = False,
) -> None:
    """The kept data as fine-tuning JSONL (train.jsonl, validation.jsonl), each line checked; bad rows are skipped."""
    from rich.markup import escape

    from distilforge.publish.export import ExportError, export_run

    def go() -> None:
        try:
            result = export_run(run_dir, format_, output, max_tokens, include_reasoning=include_reasoning)
        except ExportError as exc:
            _fail(str(exc))
        for problem in result.problems:
            console.print(f"[yellow]skipped[/yellow] {escape(problem)}", highlight=False, soft_wrap=True)
        if result.invalid > len(result.problems):
            console.print(f"[yellow]skipped[/yellow] ... and {result.invalid - len(result.problems)} more")
        if not result.total:
            _fail(f"{run_dir}: no row to export ({result.invalid} invalid); nothing written", code=1)
        for warning in result.warnings:
            console.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False, soft_wrap=True)
        counts = ", ".join(f"{p.name} {result.written[p.stem]}" for p in result.files)
        console.print(f"wrote {counts} lines to {escape(str(result.output))}"
                      + (f"; {result.invalid} invalid rows skipped" if result.invalid else ""),
                      highlight=False, soft_wrap=True)

    _guard(go)


@app.command()
def train(run_dir: RunDirArg, set_: SetOpt = None) -> None:
    """Fine-tune the student (TRL SFT: every weight below 1B parameters, LoRA above) on RUN_DIR/dataset; writes RUN_DIR/student."""
    _guard(lambda: _need_run_dir(run_dir))
    _job(run_dir, set_, None, ("train",), table=None)


@app.command("eval")
def eval_(run_dir: RunDirArg, set_: SetOpt = None) -> None:
    """Score the student before (and, once trained, after) training on eval.files; writes run.json 'eval'."""
    _guard(lambda: _need_run_dir(run_dir))
    _job(run_dir, set_, None, ("eval",), table="eval")


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Rebuild RUN_DIR/report.html and RUN_DIR/report.md (funnel, cost, loss curve, accuracy)."""
    from distilforge.report import build_report

    def go() -> None:
        _need_run_dir(run_dir)
        html_path, md_path = build_report(run_dir)
        console.print(f"wrote {html_path} and {md_path}")

    _guard(go)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more evaluated run folders; the first is the reference.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Students side by side: accuracy before/after per eval set, and each after minus the first run's (95% CI)."""
    import json

    from rich.table import Table

    from distilforge.evaluation.compare import CompareError, compare_runs

    def pct(block: dict[str, Any] | None, sign: str = "") -> str:
        if not block:
            return "-"
        value, (low, high) = block.get("accuracy", block.get("difference")), block["ci95"]
        return f"{value * 100:{sign}.1f} [{low * 100:{sign}.1f}, {high * 100:{sign}.1f}]"

    def go() -> None:
        try:
            result = compare_runs(run_dirs)
        except CompareError as exc:
            _fail(str(exc))
        if as_json:
            print(json.dumps(result, indent=2))
            return
        out = Console()
        runs = Table(title="runs")
        for col in ("", "run", "method", "student", "GKD teacher"):
            runs.add_column(col, overflow="fold")  # paths in full, folded
        for run in result["runs"]:
            runs.add_row(run["label"], run["run"], run["method"] or "-", run["student"] or "-", run["teacher"] or "")
        out.print(runs)
        table = Table(title=f"accuracy % on {', '.join(f'{k} ({n})' for k, n in result['sets'].items())}, 95% CI")
        for col in ("", "method", "set", "before", "after", "after - A"):
            table.add_column(col, justify="right" if col in ("before", "after", "after - A") else "left")
        for row in result["rows"]:
            table.add_row(row["label"], row["method"] or "-", row["set"], pct(row["before"]), pct(row["after"]),
                          pct(row["vs_first"], "+"))
        out.print(table)
        kinds = sorted({r["vs_first"]["interval"] for r in result["rows"] if r["vs_first"]})
        if kinds:
            print(f"after - A: {' and '.join(kinds)} intervals")

    _guard(go)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job workers inside this process (0: API only).")] = 1,
) -> None:
    """The HTTP API (docs at /docs), with workers and the scheduler. Creates and migrates its database.

    Environment: DISTILFORGE_API_TOKENS (name:token entries), DISTILFORGE_ADMIN_TOKENS, DATABASE_URL
    (default SQLite under DISTILFORGE_HOME), DISTILFORGE_DATA_ROOTS, DISTILFORGE_ALLOWED_TEACHERS,
    DISTILFORGE_TEACHER_KEY_ENVS, DISTILFORGE_ALLOWED_MODELS, DISTILFORGE_HUB_REPOS, DISTILFORGE_PRICES,
    DISTILFORGE_MONTHLY_CAP_USD, DISTILFORGE_OWNER_CAPS, DISTILFORGE_LIMITS_*, DISTILFORGE_RAY_ADDRESS,
    DISTILFORGE_BATCH_DISCOUNTS, DISTILFORGE_METRICS_PUBLIC.
    """
    import uvicorn

    from distilforge.service.api import create_app

    _quiet_libraries()
    uvicorn.run(create_app(workers=workers), host=host, port=port, log_level="info")


@app.command()
def worker(
    poll: Annotated[float, typer.Option(help="Seconds between looks at an empty queue.")] = 1.0,
) -> None:
    """A standalone job worker against DATABASE_URL (run as many as you like)."""
    import threading

    from distilforge.service.db import make_engine, make_sessions
    from distilforge.service.migrate import migrate
    from distilforge.service.settings import Settings
    from distilforge.service.store import Store
    from distilforge.service.worker import Worker

    _quiet_libraries()
    settings = Settings()
    engine = make_engine(settings.database_url)
    migrate(engine)
    stop = threading.Event()
    console.print(f"worker on {engine.url.render_as_string(hide_password=True)}; Ctrl-C to stop")
    try:
        Worker(Store(make_sessions(engine), settings.lease_seconds), settings, poll_seconds=poll).run_forever(stop)
    except KeyboardInterrupt:
        stop.set()


cache_app = typer.Typer(help="The response cache shared across run folders (never the model cache).",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _size(text: str) -> int:
    """'500MB', '2GB', '1024' (bytes) -> bytes."""
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3, "b": 1}
    raw = text.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if raw.endswith(unit):
            raw, factor = raw[: -len(unit)].strip(), units[unit]
            break
    else:
        factor = 1
    try:
        return int(float(raw) * factor)
    except ValueError:
        _fail(f"--max-size {text}: expected a size such as 500MB or 2GB")
        raise


def _open_cache() -> Any:
    from distilforge.core.response_cache import ENV_PATH, ResponseCache, default_cache_path

    path = default_cache_path()
    if path is None:
        _fail(f"the response cache is off ({ENV_PATH}=off)")
    return ResponseCache(path)


@cache_app.command("stats")
def cache_stats(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Where the response cache is, how many answers it holds and its size against the bound."""
    import json
    import time

    cache = _open_cache()
    stats = cache.stats()
    cache.close()
    if as_json:
        print(json.dumps(stats, indent=2))
        return
    age = f", oldest {(time.time() - stats['oldest']) / 86400:.1f} days" if stats["oldest"] else ""
    print(f"{stats['path']}: {stats['entries']} answers, {stats['bytes'] / 1e6:.1f} MB used "
          f"({stats['file_bytes'] / 1e6:.1f} MB on disk) of {stats['max_bytes'] / 1e6:.0f} MB{age}")


@cache_app.command("prune")
def cache_prune(
    max_size: Annotated[str | None, typer.Option("--max-size", help="Keep the most recently used answers up to "
                                                                      "this size, e.g. 500MB.")] = None,
    older_than: Annotated[float | None, typer.Option("--older-than", help="Drop answers unused for this many days.",
                                                     min=0)] = None,
    all_: Annotated[bool, typer.Option("--all", help="Drop every cached answer.")] = False,
) -> None:
    """Drop cached answers (default: down to the size bound). Model files in the cache root are never touched."""
    from distilforge.core.response_cache import max_bytes

    limit = _size(max_size) if max_size is not None else None
    if limit is None and older_than is None and not all_:
        limit = max_bytes()
    cache = _open_cache()
    removed = cache.prune(max_size=limit, older_than_s=None if older_than is None else older_than * 86400,
                          everything=all_)
    stats = cache.stats()
    cache.close()
    print(f"removed {removed} answers; {stats['entries']} left ({stats['file_bytes'] / 1e6:.1f} MB on disk)")


@app.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editors: `# yaml-language-server: $schema=FILE`)."""
    import json

    from distilforge.schemas.config import job_schema

    print(json.dumps(job_schema(), indent=2))


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    # typer maps `--set` to `set_`; keep sys.argv as users typed it.
    app(prog_name="distilforge", args=sys.argv[1:])


if __name__ == "__main__":
    main()
