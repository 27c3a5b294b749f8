"""Settings: defaults, sources, validation, and the production guard."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo

from executors import default_runtimes_dir
from serve_app.errors import ConfigurationError
from serve_app.settings import (
    ENV_EXAMPLE_PATH,
    MIB,
    Settings,
    env_example,
    get_settings,
    load_settings,
)
from tests.support.databases import POSTGRES_URL
from tests.support.paths import REPO
from tests.support.settings import use_settings_environment

STRONG_SECRET = "s" * 40


def aliases(field: FieldInfo) -> list[str]:
    """The variables a setting is read from, its documented name first (then any old names)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [str(alias)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No setting from the machine's environment or a .env file leaks into a test."""
    use_settings_environment(monkeypatch, tmp_path)
    yield
    get_settings.cache_clear()


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.environment) == ("127.0.0.1", 8000, "local")
    assert settings.database_url.startswith("sqlite:///")
    assert settings.redis_url is None
    assert settings.cors_origins == []
    assert settings.ray_gcs_port == 6380
    assert settings.max_concurrent_executions == 2
    assert settings.api_key_secret.get_secret_value() == "changethis"


def test_default_and_max_limits() -> None:
    settings = Settings()
    defaults, maxima = settings.default_limits(), settings.max_limits()
    assert defaults.wall_timeout_s == 5 and maxima.wall_timeout_s == 30
    assert defaults.memory_bytes == 256 * MIB and maxima.memory_bytes == 512 * MIB
    assert maxima.max_file_bytes == 64 * MIB == maxima.disk_bytes
    assert defaults.within(maxima) == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TIMEOUT", "12.5")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("REDIS_URL", "")
    settings = Settings()
    assert settings.max_wall_timeout_s == 12.5
    assert settings.port == 9000
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.log_level == "DEBUG"
    assert settings.redis_url is None


def test_cors_origins_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", '["https://a.example"]')
    assert Settings().cors_origins == ["https://a.example"]


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("MAX_MEMORY_MB=1024\nMAX_TIMEOUT=20\nUNRELATED=x\n")
    monkeypatch.setenv("MAX_TIMEOUT", "25")
    settings = Settings()
    assert settings.max_memory_mb == 1024
    assert settings.max_wall_timeout_s == 25


def test_attribute_names_are_accepted_in_code() -> None:
    assert Settings(max_wall_timeout_s=10).max_wall_timeout_s == 10


def test_env_example_lists_every_setting_with_its_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    example = (REPO / ".env.example").read_text()
    assignments = [line for line in example.splitlines() if line and not line.startswith("#")]
    listed = {line.split("=", 1)[0] for line in assignments}
    documented = {aliases(field)[0] for field in Settings.model_fields.values()}
    assert documented - listed == set()
    (tmp_path / ".env").write_text(example)
    assert Settings() == Settings(_env_file=None)


def test_env_example_is_what_the_settings_generate() -> None:
    """`exec-agent settings example > .env.example` after changing a setting keeps them equal."""
    assert (REPO / ENV_EXAMPLE_PATH).read_text() == env_example()


def test_every_setting_is_described() -> None:
    undescribed = [name for name, field in Settings.model_fields.items() if not field.description]
    assert undescribed == []


@pytest.mark.parametrize("name", ["MAX_TIMEOUT", "DEFAULT_CPU_TIME", "GRACEFUL_SHUTDOWN_TIMEOUT_S"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-1", "0"])
def test_float_settings_must_be_positive_and_finite(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("name", ["MAX_MEMORY_MB", "DEFAULT_MAX_PROCESSES", "MAX_OUTPUT_BYTES"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1.5"])
def test_integer_settings_must_be_positive_integers(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_nan_passed_in_code_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(max_cpu_time_s=math.nan)


@pytest.mark.parametrize(
    ("name", "value", "maximum"),
    [
        ("DEFAULT_TIMEOUT", "31", "MAX_TIMEOUT"),
        ("DEFAULT_CPU_TIME", "30.5", "MAX_CPU_TIME"),
        ("DEFAULT_MEMORY_MB", "1024", "MAX_MEMORY_MB"),
        ("DEFAULT_MAX_OUTPUT_BYTES", str(2 * MIB), "MAX_OUTPUT_BYTES"),
        ("DEFAULT_MAX_PROCESSES", "65", "MAX_PROCESSES"),
        ("DEFAULT_MAX_FILE_BYTES", str(65 * MIB), "MAX_FILE_BYTES"),
    ],
)
def test_defaults_above_maxima_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, maximum: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=f"{name} must not exceed {maximum}"):
        Settings()


def test_max_file_bytes_above_sandbox_disk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_DISK_MB", "32")
    with pytest.raises(ValidationError, match="MAX_FILE_BYTES must not exceed SANDBOX_DISK_MB"):
        Settings()


def test_metrics_port_and_its_old_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().metrics_port == 8080
    monkeypatch.setenv("RAY_METRICS_EXPORT_PORT", "9100")
    assert Settings().metrics_port == 9100
    monkeypatch.setenv("METRICS_PORT", "9200")
    assert Settings().metrics_port == 9200  # the documented name wins
    monkeypatch.setenv("METRICS_PORT", "8000")  # PORT's
    with pytest.raises(ValidationError, match="PORT, RAY_GCS_PORT and METRICS_PORT must differ"):
        Settings()


def test_replica_bounds_sizes_and_ports_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECUTOR_NUM_REPLICAS_MIN", "3")
    monkeypatch.setenv("MAX_CODE_BYTES", str(4 * MIB))
    monkeypatch.setenv("RAY_GCS_PORT", "8000")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "EXECUTOR_NUM_REPLICAS_MIN" in str(caught.value)
    assert "MAX_CODE_BYTES must not exceed MAX_BODY_BYTES" in str(caught.value)
    assert "RAY_GCS_PORT" in str(caught.value)


def production(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    values = {"ENVIRONMENT": "production", "API_KEY_SECRET": STRONG_SECRET}
    values |= {"DATABASE_URL": POSTGRES_URL, **env}
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_production_with_real_secrets_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, ENVIRONMENT="Production")
    settings = Settings()
    assert settings.require_full_isolation
    assert settings.sandbox_config().require_full_isolation


@pytest.mark.parametrize("secret", ["changethis", "short-but-not-placeholder"])
def test_production_refuses_placeholder_or_short_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    production(monkeypatch, API_KEY_SECRET=secret)
    with pytest.raises(ConfigurationError, match="API_KEY_SECRET") as caught:
        load_settings()
    assert secret not in str(caught.value)  # the message never echoes a secret


def test_production_refuses_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    production(monkeypatch, DATABASE_URL="sqlite:///./data/x.db")
    with pytest.raises(ConfigurationError, match="SQLite"):
        load_settings()


def test_placeholders_are_fine_outside_production() -> None:
    assert Settings(environment="staging").api_key_secret.get_secret_value() == "changethis"


def test_sandbox_config_follows_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_REQUIRE_FULL_ISOLATION", "true")
    monkeypatch.setenv("SANDBOX_PYTHON", "/usr/bin/python3")
    config = Settings().sandbox_config()
    assert config.require_full_isolation
    assert config.python_executable == "/usr/bin/python3"


def test_runtimes_follow_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = Settings().sandbox_config()
    assert (config.default_runtime, config.runtimes_dir) == ("scientific", default_runtimes_dir())
    monkeypatch.setenv("DEFAULT_RUNTIME", "minimal")
    monkeypatch.setenv("RUNTIMES_DIR", str(tmp_path))
    config = Settings().sandbox_config()
    assert (config.default_runtime, config.runtimes_dir) == ("minimal", str(tmp_path))
    monkeypatch.setenv("RUNTIMES_DIR", "")  # empty: the engine's own default
    assert Settings().sandbox_config().runtimes_dir == default_runtimes_dir()


@pytest.mark.parametrize("value", ["", "nope", "Scientific", "minimal "])
def test_default_runtime_must_be_known(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DEFAULT_RUNTIME", value)
    with pytest.raises(ValidationError, match="DEFAULT_RUNTIME"):
        Settings()


def test_artifact_caps_reach_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.max_artifacts, settings.max_artifact_bytes) == (20, 10 * MIB)
    monkeypatch.setenv("MAX_ARTIFACTS", "3")
    monkeypatch.setenv("MAX_ARTIFACT_BYTES", "1000")
    settings = Settings()
    for limits in (settings.default_limits(), settings.max_limits()):
        assert (limits.max_artifacts, limits.max_artifact_bytes) == (3, 1000)
    monkeypatch.setenv("MAX_ARTIFACTS", "-1")
    with pytest.raises(ValidationError, match="MAX_ARTIFACTS"):
        Settings()


def test_sandbox_python_must_be_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_PYTHON", "python3")
    with pytest.raises(ValidationError, match="absolute"):
        Settings()


def test_get_settings_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("PORT", "9999")
    assert get_settings() is first
    get_settings.cache_clear()
    assert get_settings().port == 9999


def test_result_cache_and_batch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.result_cache_ttl_s, settings.max_batch_items) == (3600, 1000)
    assert settings.result_cache_max_entries == 10_000
    assert settings.result_cache_max_record_bytes == MIB
    monkeypatch.setenv("RESULT_CACHE_TTL_S", "60")
    monkeypatch.setenv("RESULT_CACHE_MAX_ENTRIES", "5")
    monkeypatch.setenv("RESULT_CACHE_MAX_RECORD_BYTES", "4096")
    settings = Settings()
    assert settings.result_cache_ttl_s == 60
    assert settings.result_cache_max_entries == 5
    assert settings.result_cache_max_record_bytes == 4096


@pytest.mark.parametrize(
    "name", ["RESULT_CACHE_TTL_S", "RESULT_CACHE_MAX_ENTRIES", "RESULT_CACHE_MAX_RECORD_BYTES"]
)
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "nan"])
def test_result_cache_settings_must_be_positive_integers(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        Settings()


def test_tracing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.otel_exporter_otlp_endpoint, settings.otel_service_name) == (
        None,
        "exec-agent",
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    assert Settings().otel_exporter_otlp_endpoint is None  # empty: off
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", " http://collector:4318 ")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agent-7")
    settings = Settings()
    assert settings.otel_exporter_otlp_endpoint == "http://collector:4318"
    assert settings.otel_service_name == "agent-7"


@pytest.mark.parametrize("value", ["collector:4318", "grpc://collector:4317", "/v1/traces"])
def test_tracing_endpoint_must_be_an_http_url(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", value)
    with pytest.raises(ValidationError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        Settings()
