"""The cluster manifests are valid for the tools that read them and match the code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from executors import ExecutorAppArgs

ROOT = Path(__file__).resolve().parent.parent
SERVE_SCHEMA = json.loads((ROOT / "tests/data/serve-config.schema.json").read_text())


def _without_nulls(value: Any) -> Any:
    """The API server prunes nulls; the schema is written for what it stores."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.fixture(scope="module")
def serve_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "cluster/serve-config.yaml").read_text())
    return loaded


def test_serve_config_matches_the_serve_schema(serve_config: dict[str, Any]) -> None:
    jsonschema.validate(_without_nulls(serve_config), SERVE_SCHEMA)


def test_serve_config_args_are_the_app_builders(serve_config: dict[str, Any]) -> None:
    (app,) = serve_config["applications"]
    module, _, name = app["import_path"].partition(":")
    assert module == "executors._deployment"
    assert name == "app_builder"
    args = ExecutorAppArgs.model_validate(app["args"])
    assert 1 <= args.min_replicas <= args.max_replicas
    assert args.require_full_isolation


def test_app_builder_refuses_unknown_args() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ExecutorAppArgs.model_validate({"slot": 2})
