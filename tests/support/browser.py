"""A real browser for the tests of the service's pages: Debian's Chromium, headless, driven by
Selenium through its own chromedriver, able to reach 127.0.0.1 only.

Missing Chromium fails the test (``scripts/setup --test`` installs it): a page's tests never pass
by not running. Every host name but 127.0.0.1 resolves to nothing and every proxied request goes
to a closed port, so a page that reaches for a CDN shows it as a failed resource, never traffic.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.paths import REPO
from tests.support.ports import free_port

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "chromium",
    "console_errors",
    "foreign_resources",
    "screenshot_dir",
]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = "1280,900"
SCREENSHOTS_VARIABLE = "EXEC_AGENT_SCREENSHOTS"


def screenshot_dir() -> Path:
    """``$EXEC_AGENT_SCREENSHOTS``, else ``test-artifacts/screenshots/`` of the repository."""
    configured = os.environ.get(SCREENSHOTS_VARIABLE)
    directory = Path(configured) if configured else REPO / "test-artifacts" / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _options(profile: Path) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root, which Chromium's sandbox refuses
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WINDOW}",
        f"--user-data-dir={profile}",
        # No traffic but to loopback: names resolve to nothing, a proxy nobody listens on.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--proxy-server=http://127.0.0.1:{free_port()}",
        "--proxy-bypass-list=127.0.0.1",  # loopback goes direct (Chromium's implicit rule)
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its profile in ``profile`` (chromedriver's log beside it), quit
    when the block ends."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"no browser for the page tests: {', '.join(missing)} missing; "
            "run scripts/setup --test (installs chromium and chromium-driver)"
        )
    log = profile.parent / f"{profile.name}.chromedriver.log"
    driver = webdriver.Chrome(
        options=_options(profile), service=Service(str(CHROMEDRIVER), log_output=str(log))
    )
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """What the page logged since the last call at level SEVERE (failed loads, CSP refusals,
    uncaught errors)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry for entry in entries if entry.get("level") == "SEVERE"]


def foreign_resources(driver: webdriver.Chrome, origin: str) -> list[str]:
    """The resources the page loaded from anywhere but ``origin``; a ``blob:`` URL counts as
    the origin that made it."""
    script = "return performance.getEntriesByType('resource').map(e => e.name)"
    names: list[str] = json.loads(json.dumps(driver.execute_script(script)))
    return [name for name in names if _origin(name.removeprefix("blob:")) != origin]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
