"""Which HTTP ingress `exec-agent serve` asks Ray Serve for (SERVE_INGRESS)."""

from __future__ import annotations

import pytest

from serve_app._serve import choose_ingress, haproxy_binary


def test_serves_own_proxy_is_the_default() -> None:
    assert choose_ingress({}) == "proxy"
    assert choose_ingress({"SERVE_INGRESS": " "}) == "proxy"


def test_haproxy_is_chosen_when_asked_for_and_present() -> None:
    if haproxy_binary() is None:
        with pytest.raises(ValueError, match="no haproxy binary"):
            choose_ingress({"SERVE_INGRESS": "haproxy"})
    else:
        assert choose_ingress({"SERVE_INGRESS": "HAProxy"}) == "haproxy"


def test_an_unknown_ingress_is_refused() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        choose_ingress({"SERVE_INGRESS": "nginx"})
