"""docker-compose.yml and the Dockerfile stay valid (no Docker engine runs on these machines)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "api", "worker", "vllm"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert "healthcheck" in service, f"{name} has no healthcheck"
    assert services["vllm"]["profiles"] == ["gpu"]
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = services["worker"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and "DISTILFORGE_API_TOKENS" in env
    for volume in ("data", "pgdata"):
        assert volume in compose["volumes"]
    # Commands name real CLI commands.
    from typer.main import get_command

    from distilforge.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    assert services["api"]["command"][1] in commands and services["worker"]["command"][1] in commands


def test_dockerfile_installs_the_package():
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "pip install ." in text and 'CMD ["distilforge", "serve"' in text
