"""Strict config: unknown or mistyped keys fail with the file, line and dotted path."""

from __future__ import annotations

import pytest

from distilforge.schemas import ConfigError, load_config

GOOD = """\
name: t
seeds:
  path: seeds.jsonl
teacher:
  backend: openai
  base_url: http://127.0.0.1:1/v1
  params:
    temperature: 0.2
"""


def _write(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_good_config_and_relative_paths(tmp_path):
    (tmp_path / "seeds.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    config = load_config(_write(tmp_path, GOOD))
    assert config.teacher.params.temperature == 0.2
    assert config.seeds.path == str(tmp_path / "seeds.jsonl")  # relative to the config file
    assert config.generation.mode == "cot" and config.train.enabled is False


def test_unknown_key_names_file_line_and_path(tmp_path):
    path = _write(tmp_path, GOOD.replace("temperature: 0.2", "temprature: 0.2"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:8: teacher.params.temprature: unknown key" in str(err.value)


def test_mistyped_value(tmp_path):
    path = _write(tmp_path, GOOD + "generation:\n  samples_per_seed: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:10: generation.samples_per_seed:" in str(err.value)
    assert "integer" in str(err.value)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match=r"seeds: required key is missing"):
        load_config(_write(tmp_path, "name: t\n"))


def test_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"job.yaml:3: invalid YAML"):
        load_config(_write(tmp_path, "seeds:\n  path: x\n  - oops\n"))


def test_set_overrides_any_key_with_typed_values(tmp_path):
    config = load_config(_write(tmp_path, GOOD), ["teacher.params.temperature=0", "train.enabled=true",
                                                   "generation.samples_per_seed=4", "teacher.params.stop=[a, b]"])
    assert config.teacher.params.temperature == 0
    assert config.train.enabled is True and config.generation.samples_per_seed == 4
    assert config.teacher.params.stop == ["a", "b"]


def test_set_rejects_unknown_keys_and_bad_form(tmp_path):
    with pytest.raises(ConfigError, match=r"teacher\.temprature: unknown key"):
        load_config(_write(tmp_path, GOOD), ["teacher.temprature=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(_write(tmp_path, GOOD), ["teacher.params.temperature"])


def test_a_pasted_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="api_key_env"):
        load_config(_write(tmp_path, GOOD + "  api_key_env: sk-abc123\n"))


def test_cli_bad_config_exits_2_with_one_line(cli, tmp_path):
    path = _write(tmp_path, GOOD.replace("backend: openai", "backend: anthropic-direct"))
    result = cli("run", path, expect=2)
    assert result.exit_code == 2
    assert "teacher.backend" in result.output and "job.yaml:5" in result.output
    assert "Traceback" not in result.output


def test_every_example_config_is_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    modes = {load_config(path).generation.mode for path in examples}
    assert modes == {"cot", "icl", "instruct", "self-instruct", "evol-instruct"}


def test_renamed_key_still_works_with_a_one_line_hint(cli, tmp_path):
    import json

    (tmp_path / "seeds.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    path = _write(tmp_path, GOOD.replace("  params:", "  batch: true\n  params:"))
    result = cli("estimate", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch_discount"] is not None  # the old key turned the Batch API on
    hints = [line for line in result.stderr.splitlines() if "teacher.batch is now teacher.batch_api" in line]
    assert len(hints) == 1 and hints[0].startswith("warning:")


def _config_models() -> list[type]:
    """Every model a job file reaches, from JobConfig down (union members included)."""
    import typing

    from pydantic import BaseModel

    from distilforge.schemas import JobConfig

    found: list[type] = []
    stack: list[typing.Any] = [JobConfig]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            if item in found:
                continue
            found.append(item)
            stack += [field.annotation for field in item.model_fields.values()]
        stack += list(typing.get_args(item))
    return found


def test_every_config_field_has_a_description():
    models = _config_models()
    assert len(models) > 20
    undescribed = [f"{m.__name__}.{name}" for m in models for name, field in m.model_fields.items()
                   if not (field.description or "").strip()]
    assert undescribed == []


def test_schema_command_prints_the_job_files_json_schema_every_key_described(cli):
    import json
    from pathlib import Path

    import jsonschema
    import yaml

    result = cli("schema")
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert {"seeds", "teacher", "generation", "filters", "loop"} <= set(schema["properties"])
    assert schema["required"] == ["seeds"]
    undescribed = [f"{where}.{key}" for where, obj in [("(top)", schema), *schema["$defs"].items()]
                   for key, prop in obj.get("properties", {}).items() if not prop.get("description")]
    assert undescribed == []
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):  # editors agree
        assert list(validator.iter_errors(yaml.safe_load(path.read_text()))) == [], path
    assert list(validator.iter_errors({"seeds": {"path": "s.jsonl"}, "teacher": {"temprature": 1}}))


def test_a_cross_field_error_names_the_line_of_the_key_it_blames(cli, tmp_path):
    path = _write(tmp_path, GOOD.replace("backend: openai", "backend: local\n  batch_api: true"))
    result = cli("run", path, "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {path}:6: teacher.batch_api: the Batch API needs backend: openai"]
    assert not (tmp_path / "run").exists()
    path = _write(tmp_path, GOOD + "loop:\n  probe_fraction: 0.2\n  rounds: 2\n")
    result = cli("estimate", path, expect=2)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {path}:11: loop.rounds: targeted rounds train the student each round; set train.enabled"]
    with pytest.raises(ConfigError, match=r"job.yaml:9: teacher.params.temperature: o3 is a reasoning model"):
        load_config(_write(tmp_path, GOOD.replace("backend: openai", "backend: openai\n  model: o3")))
