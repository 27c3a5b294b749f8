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


def test_serves_own_proxy_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVE_INGRESS", raising=False)
    assert ingress(None) == "proxy"
    assert ingress(" ") == "proxy"


def test_haproxy_is_chosen_when_asked_for_and_present() -> None:
    if haproxy_binary() is None:
        with pytest.raises(ValueError, match="no haproxy binary"):
            ingress("haproxy")
    else:
        assert ingress("HAProxy") == "haproxy"


def test_an_unknown_ingress_is_refused() -> None:
    with pytest.raises(ValidationError, match="SERVE_INGRESS"):
        Settings(SERVE_INGRESS="nginx")
