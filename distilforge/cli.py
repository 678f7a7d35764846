"""The `distilforge` command line."""

from __future__ import annotations

import sys
import time
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

ConfigArg = Annotated[Path, typer.Argument(help="Job config (YAML), or an existing run folder to continue.")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (default: output.dir, else runs/NAME).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set teacher.params.temperature=0.2")]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder written by `distilforge run` or `generate`.")]


def _quiet_libraries() -> None:
    """Our own progress bars say what is happening; the libraries' per-shard bars only add noise."""
    import os

    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    # transformers 5 renames gradient_checkpointing; TRL still passes the old name. Not the user's concern.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(config_path: Path, overrides: list[str] | None, output: Path | None) -> tuple[Any, Path]:
    from distilforge.core.config import load_config
    from distilforge.core.run_files import load_run_config

    if config_path.is_dir():
        config = load_run_config(config_path, overrides)
        return config, output or config_path
    config = load_config(config_path, overrides)
    run_dir = output or (Path(config.output.dir) if config.output.dir else Path("runs") / (config.name or config_path.stem))
    return config, run_dir


def _guard(fn: Any) -> Any:
    """Known errors become one clear line and exit code 2; Ctrl-C exits 130 with a resume hint."""
    from distilforge.core.budget import BudgetError
    from distilforge.core.config import ConfigError
    from distilforge.core.seeds import SeedError
    from distilforge.models import ModelError
    from distilforge.teachers.base import TeacherError

    _quiet_libraries()
    try:
        return fn()
    except (ConfigError, SeedError, ModelError, TeacherError, BudgetError, FileNotFoundError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: paid responses are in the journal; rerun the same command to resume")
        raise typer.Exit(130) from None
    except Exception as exc:
        from distilforge.trainers.sft import TrainError

        if isinstance(exc, TrainError):
            _fail(str(exc))
        raise


def _generate(config: Any, run_dir: Path) -> dict[str, Any]:
    from distilforge.run.lifecycle import run_generate

    return run_generate(config, run_dir, console)


def _train(config: Any, run_dir: Path) -> dict[str, Any]:
    from distilforge.run.stages import train_stage

    return train_stage(config, run_dir, console)


def _eval(config: Any, run_dir: Path) -> dict[str, Any]:
    from distilforge.run.stages import eval_stage

    return eval_stage(config, run_dir, console)


@app.command()
def run(config: ConfigArg, output: OutputOpt = None, set_: SetOpt = None) -> None:
    """Run the whole job: generate -> filter -> dataset, then train -> eval if train.enabled."""
    from distilforge.report.summary import print_summary

    def go() -> dict[str, Any]:
        started = time.monotonic()
        cfg, run_dir = _load(config, set_, output)
        result = _generate(cfg, run_dir)
        if result.get("stopped") == "interrupted":
            print_summary(result, console)
            console.print(f"[yellow]interrupted[/yellow]: rerun `distilforge run {config} --output {run_dir}` to resume")
            raise typer.Exit(130)
        if cfg.train.enabled:
            result = _train(cfg, run_dir)
            result = _eval(cfg, run_dir)
        from distilforge.core.run_files import update_run

        if cfg.output.hub_repo:
            from distilforge.publish import PublishError, publish_dataset

            try:
                result = update_run(run_dir, published=publish_dataset(run_dir, cfg.output.hub_repo,
                                                                       private=cfg.output.private))
            except PublishError as exc:
                _fail(f"the run completed, but publishing failed: {exc}")
        total = round(time.monotonic() - started, 3)
        result = update_run(run_dir, total_seconds=total)
        from distilforge.report import build_report

        html_path, _ = build_report(run_dir)
        print_summary(result, console)
        console.print(f"run folder: {run_dir}  (total {total:.1f} s); report: {html_path}")
        return result

    _guard(go)


@app.command()
def generate(config: ConfigArg, output: OutputOpt = None, set_: SetOpt = None) -> None:
    """Only the data stage: seeds -> teacher -> filters -> DIR/dataset. Resumes an existing run folder."""
    from distilforge.report.summary import print_summary

    def go() -> None:
        cfg, run_dir = _load(config, set_, output)
        print_summary(_generate(cfg, run_dir), console)
        console.print(f"run folder: {run_dir}")

    _guard(go)


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

    from distilforge.run.estimate import estimate_cost

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
        print(f"expected assumes {est['assumed_completion_tokens_per_sample']} completion tokens per sample; "
              "worst case assumes every sample uses max_tokens")
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
    from distilforge.publish import PublishError, publish_dataset, publish_model

    def go() -> None:
        if not repo and not model_repo:
            _fail("give --repo ORG/NAME (dataset), --model-repo ORG/NAME (student), or both")
        try:
            if repo:
                result = publish_dataset(run_dir, repo, private=private)
                update_run(run_dir, published=result)
                console.print(f"published {', '.join(result['files'])} to {result['url']}")
            if model_repo:
                result = publish_model(run_dir, model_repo, private=private)
                update_run(run_dir, published_model=result)
                console.print(f"published the student ({len(result['files'])} files) to {result['url']}")
        except PublishError as exc:
            _fail(str(exc))

    _guard(go)


@app.command()
def train(run_dir: RunDirArg, set_: SetOpt = None) -> None:
    """Fine-tune the student (TRL SFT, LoRA by default) on RUN_DIR/dataset; writes RUN_DIR/student."""

    def go() -> None:
        cfg, _ = _load(run_dir, set_, None)
        result = _train(cfg, run_dir)
        console.print(f"trained: {result['train']['steps']} steps, loss {result['train']['first_loss']} -> "
                      f"{result['train']['last_loss']}; saved {run_dir / 'student'}")

    _guard(go)


@app.command("eval")
def eval_(run_dir: RunDirArg, set_: SetOpt = None) -> None:
    """Score the student before (and, once trained, after) training on eval.files; writes run.json 'eval'."""
    from distilforge.report.summary import print_summary

    def go() -> None:
        cfg, _ = _load(run_dir, set_, None)
        print_summary(_eval(cfg, run_dir), console)

    _guard(go)


@app.command()
def report(run_dir: RunDirArg) -> None:
    """Rebuild RUN_DIR/report.html and RUN_DIR/report.md (funnel, cost, loss curve, accuracy)."""
    from distilforge.report import build_report

    def go() -> None:
        html_path, md_path = build_report(run_dir)
        console.print(f"wrote {html_path} and {md_path}")

    _guard(go)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Job workers inside this process (0: API only).")] = 1,
) -> None:
    """The HTTP API (docs at /docs), with workers and the scheduler. Creates and migrates its database.

    Environment: DISTILFORGE_API_TOKENS (bearer tokens), DATABASE_URL (default SQLite under
    DISTILFORGE_HOME), DISTILFORGE_DATA_ROOTS, DISTILFORGE_ALLOWED_TEACHERS,
    DISTILFORGE_TEACHER_KEY_ENVS, DISTILFORGE_HUB_REPOS, DISTILFORGE_MONTHLY_CAP_USD.
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


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    # typer maps `--set` to `set_`; keep sys.argv as users typed it.
    app(prog_name="distilforge", args=sys.argv[1:])


if __name__ == "__main__":
    main()
