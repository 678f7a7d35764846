"""Create or upgrade the job store's schema with Alembic (run by `serve` and `worker` on start)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine


def migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
