"""The playground in a real browser (headless Chromium) against a real ``exec-agent serve``: a key
pasted, programs run with their output streamed, a plot shown, errors explained, hostile output
left inert, sessions that keep state, standard input.

Every test checks that the page broke no rule of its Content-Security-Policy and loaded nothing
from another origin. Each state is saved as a screenshot (tests/support/browser.py says where).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.browser import chromium, console_errors, foreign_resources, screenshot_dir
from tests.support.live_server import SECRET, LiveServer, live_server

pytestmark = [pytest.mark.ray, pytest.mark.sandbox]

RUN_TIMEOUT_S = 120.0
"""A bound for a run seen from the page (the first session waits for its host), not a goal."""
TERMINAL = {"ok", "nonzero_exit", "crashed", "timeout", "memory_limit", "output_limit"}
HOSTILE = ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=1">')
HOSTILE_NAME = "<img src=x onerror=window.__pwned=1>.txt"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Page:
    """The playground in one browser tab, and what its console said so far."""

    def __init__(self, driver: webdriver.Chrome, server: LiveServer) -> None:
        self.driver = driver
        self.server = server
        self.console: list[dict[str, Any]] = []

    def open(self) -> None:
        self.driver.get(f"{self.server.url}/")
        self.wait(lambda: self.js("return document.readyState") == "complete", "the page loads")
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, ".CodeMirror"), "the editor")

    def js(self, script: str, *arguments: Any) -> Any:
        return self.driver.execute_script(script, *arguments)

    def wait(self, condition: Any, what: str, timeout_s: float = 30.0) -> Any:
        return WebDriverWait(self.driver, timeout_s).until(
            lambda _: condition(), f"waited in vain for {what}"
        )

    def element(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def enter_key(self, key: str) -> None:
        field = self.element("#api-key")
        field.clear()
        field.send_keys(key + Keys.ENTER)

    def wait_for_runtimes(self) -> None:
        self.wait(lambda: "scientific" in self.runtimes(), "the runtimes of GET /v1/runtimes", 60.0)

    def runtimes(self) -> list[str]:
        # In one script: the page replaces the options while it loads them.
        script = "return Array.from(document.getElementById('runtime').options, o => o.value)"
        return list(self.js(script))

    def set_code(self, code: str) -> None:
        self.js("document.querySelector('.CodeMirror').CodeMirror.setValue(arguments[0])", code)

    def set_stdin(self, text: str) -> None:
        self.js("document.getElementById('stdin-box').open = true")
        field = self.element("#stdin")
        field.clear()
        field.send_keys(text)

    def last_run(self) -> WebElement:
        runs = self.driver.find_elements(By.CSS_SELECTOR, "#runs .run")
        assert runs, "no run on the page"
        return runs[-1]

    def status(self) -> str:
        return self.last_run().get_attribute("data-status") or ""

    def run(self, *, until: set[str] | None = None) -> WebElement:
        """Click Run and wait until the new run's status is in ``until`` (terminal or error)."""
        before = self.newest()
        self.element("#run").click()
        return self.finish(before, until)

    def newest(self) -> WebElement | None:
        runs = self.driver.find_elements(By.CSS_SELECTOR, "#runs .run")
        return runs[-1] if runs else None

    def finish(self, before: WebElement | None, until: set[str] | None = None) -> WebElement:
        """Wait for a run card other than ``before``, then for its status in ``until``."""
        wanted = until or TERMINAL | {"error"}
        self.wait(lambda: self.newest() not in (None, before), "a new run card")
        self.wait(lambda: self.status() in wanted, f"a status in {sorted(wanted)}", RUN_TIMEOUT_S)
        return self.last_run()

    def text(self, run: WebElement, selector: str) -> str:
        # textContent: what the page put there, whether or not it is scrolled into view.
        return str(run.find_element(By.CSS_SELECTOR, selector).get_attribute("textContent"))

    def screenshot(self, name: str) -> None:
        path = screenshot_dir() / name
        path.unlink(missing_ok=True)  # never an older run's picture
        assert self.driver.save_screenshot(str(path)), name
        assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name

    def check_clean(self, *, allowed_failures: tuple[int, ...] = ()) -> None:
        """No CSP violation, no error but the failed loads of ``allowed_failures`` (statuses
        the test provoked), nothing from another origin."""
        fresh = console_errors(self.driver)
        self.console += fresh
        violations = [e for e in fresh if "Content Security Policy" in str(e.get("message"))]
        assert violations == [], violations
        expected = tuple(f"status of {status}" for status in allowed_failures)
        unexpected = [e for e in fresh if not any(s in str(e["message"]) for s in expected)]
        assert unexpected == [], unexpected
        assert foreign_resources(self.driver, self.server.url) == []
        assert self.js("return window.__pwned") is None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("playground")


@pytest.fixture(scope="module")
def server(ray_session: None, workdir: Path) -> Iterator[LiveServer]:
    with live_server(workdir) as server:
        yield server


def new_key(workdir: Path, name: str, per_minute: int) -> str:
    """A key of the live server's database made as a user makes one (``exec-agent keys``)."""
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{workdir / 'live.db'}",
        "API_KEY_SECRET": SECRET,
    }
    command = ["keys", "create", "--name", name, "--rate-limit-per-minute", str(per_minute)]
    made = subprocess.run(
        [str(Path(sys.executable).parent / "exec-agent"), *command],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def page(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as driver:
        under_test = Page(driver, server)
        under_test.open()
        yield under_test


@pytest.fixture
def ready(page: Page) -> Page:
    """The page opened afresh with the key in place (the tab keeps it across loads)."""
    page.open()
    if page.element("#api-key").get_attribute("value") != page.server.key:
        page.enter_key(page.server.key)
    page.wait_for_runtimes()
    Select(page.element("#mode")).select_by_value("run")
    # What an earlier test left (its key's refusals on this load) is kept for the last check.
    page.console += console_errors(page.driver)
    return page


def test_the_key_lives_in_the_tab_only(page: Page) -> None:
    page.screenshot("01-empty.png")
    assert "Paste an API key" in page.element("#message").text
    page.enter_key(page.server.key)
    page.wait_for_runtimes()
    assert page.js("return sessionStorage.getItem('exec-agent-playground-key')") == page.server.key
    assert page.js("return localStorage.length") == 0
    assert page.js("return document.cookie") == ""
    assert page.driver.get_cookies() == []
    page.open()  # a reload: the tab still has it
    assert page.element("#api-key").get_attribute("value") == page.server.key
    page.wait_for_runtimes()
    default = Select(page.element("#runtime")).first_selected_option
    assert default.get_attribute("value") == "scientific"
    page.screenshot("02-key-entered.png")
    page.check_clean()


def test_output_streams_then_the_record(ready: Page) -> None:
    ready.set_code("")
    ready.element(".CodeMirror-lines").click()
    before = ready.newest()
    typing = ActionChains(ready.driver)
    typing.send_keys('import time; print("first", flush=True); time.sleep(4); print("second")')
    typing.key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL)  # the shortcut
    typing.perform()
    ready.wait(
        lambda: "first" in ready.text(ready.last_run(), ".stdout"), "the first line", RUN_TIMEOUT_S
    )
    assert ready.status() == "running"  # streamed: the program has not ended yet
    assert "second" not in ready.text(ready.last_run(), ".stdout")
    ready.screenshot("03-streaming.png")
    run = ready.finish(before, {"ok", "nonzero_exit", "error"})
    assert ready.status() == "ok", ready.text(run, ".error")
    assert ready.text(run, ".stdout") == "first\nsecond\n"
    assert ready.text(run, ".stderr") == ""
    assert ready.text(run, ".exit-code") == "exit code 0"
    assert UUID.match(ready.text(run, ".run-id"))
    usage = ready.text(run, ".usage")
    for term in ("wall time", "CPU time", "peak memory", "runtime", "scientific"):
        assert term in usage
    assert re.search(r"wall time\d+\.\d{3} s", usage), usage
    limits = ready.text(run, ".limits")
    for name in ("wall_timeout_s", "cpu_time_s", "memory_mb", "max_output_bytes"):
        assert f"limit {name}" in limits
    ready.screenshot("04-ok.png")
    ready.check_clean()


def test_a_plot_is_shown_and_other_files_are_links(ready: Page) -> None:
    ready.set_code(
        "import matplotlib.pyplot as plt\n"
        "open('out/table.csv', 'w').write('a,b\\n1,2\\n')\n"
        "open('out/evil.svg', 'w').write("
        '\'<svg xmlns="http://www.w3.org/2000/svg" onload="window.__pwned=1"/>\')\n'
        "open('out/evil.html', 'w').write('<script>window.__pwned=1</script>')\n"
        "plt.plot([1, 2, 3])\n"
        "plt.show()\n"
    )
    run = ready.run()
    assert ready.status() == "ok", ready.text(run, ".error") + ready.text(run, ".stderr")
    images = run.find_elements(By.CSS_SELECTOR, ".artifacts img")
    assert [image.get_attribute("alt") for image in images] == ["out/figure-1.png"]
    image = images[0]
    assert (image.get_attribute("src") or "").startswith(f"blob:{ready.server.url}/")
    ready.wait(
        lambda: ready.js("return arguments[0].complete && arguments[0].naturalWidth", image) > 0,
        "the figure decoded",
    )
    links = {
        link.text: link.get_attribute("href") or ""
        for link in run.find_elements(By.CSS_SELECTOR, ".artifacts a.download")
    }
    assert set(links) == {"out/evil.html", "out/evil.svg", "out/figure-1.png", "out/table.csv"}
    assert all(href.startswith("blob:") for href in links.values())
    assert ready.driver.find_elements(By.CSS_SELECTOR, "svg, iframe, object, embed") == []
    ready.js("arguments[0].scrollIntoView()", image)
    ready.screenshot("05-plot.png")
    ready.check_clean()


def test_a_raising_program_shows_its_traceback(ready: Page) -> None:
    ready.set_code("def f():\n    raise ValueError('boom')\n\nf()\n")
    run = ready.run()
    assert ready.status() == "nonzero_exit"
    assert ready.text(run, ".exit-code") == "exit code 1"
    stderr = ready.text(run, ".stderr")
    assert "Traceback (most recent call last)" in stderr
    assert "ValueError: boom" in stderr
    ready.screenshot("06-traceback.png")
    ready.check_clean()


def test_a_refused_request_is_explained(ready: Page) -> None:
    ready.set_code("#" * (300 * 1024))  # over MAX_CODE_BYTES (256 KiB), under the body cap
    run = ready.run()
    assert ready.status() == "error"
    error = ready.text(run, ".error")
    assert error.startswith("422 invalid_request"), error
    assert "code" in error
    ready.screenshot("07-invalid-request.png")
    ready.check_clean(allowed_failures=(422,))


def test_a_bad_key_is_explained(ready: Page) -> None:
    ready.enter_key("not-a-key")
    ready.wait(lambda: "401" in ready.element("#message").text, "the runtimes' refusal")
    assert "Runtimes: 401 unauthorized" in ready.element("#message").text
    ready.set_code("print('never runs')")
    run = ready.run()
    assert ready.status() == "error"
    error = ready.text(run, ".error")
    assert error.startswith("401 unauthorized"), error
    assert "check the API key" in error
    assert ready.text(run, ".stdout") == ""
    ready.screenshot("08-bad-key.png")
    ready.check_clean(allowed_failures=(401,))
    ready.enter_key(ready.server.key)


def test_hostile_output_stays_text(ready: Page) -> None:
    lines = "\n".join(HOSTILE)
    ready.set_code(
        f"import sys\nprint({lines!r})\nprint({lines!r}, file=sys.stderr)\n"
        f"open('out/' + {HOSTILE_NAME!r}, 'w').write({lines!r})\n"
    )
    run = ready.run()
    assert ready.status() == "ok"
    assert ready.text(run, ".stdout") == lines + "\n"
    assert ready.text(run, ".stderr") == lines + "\n"
    visible = run.find_element(By.CSS_SELECTOR, ".stdout").text
    for hostile in HOSTILE:
        assert hostile in visible  # the characters are shown
    links = run.find_elements(By.CSS_SELECTOR, ".artifacts a.download")
    assert [link.text for link in links] == [f"out/{HOSTILE_NAME}"]  # a name is text too
    assert ready.js("return window.__pwned") is None
    assert ready.driver.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    assert ready.driver.find_elements(By.CSS_SELECTOR, "#runs script, #runs img") == []
    scripts = ready.js("return Array.from(document.scripts, s => s.getAttribute('src'))")
    assert all(src and src.startswith("/static/") for src in scripts), scripts
    ready.screenshot("09-hostile-output.png")
    ready.check_clean()


def test_standard_input_reaches_the_program(ready: Page) -> None:
    ready.set_stdin("hello world")
    ready.set_code("print(input().upper())\n")
    run = ready.run()
    assert ready.status() == "ok"
    assert ready.text(run, ".stdout") == "HELLO WORLD\n"
    ready.screenshot("10-stdin.png")
    ready.set_stdin("")
    ready.check_clean()


def test_session_cells_keep_state(ready: Page) -> None:
    Select(ready.element("#mode")).select_by_value("session")
    assert ready.element("#session-status").text == "none"
    ready.set_code("x = 41\nprint('set')")
    first = ready.run()
    assert ready.status() == "ok", ready.text(first, ".error")
    session_id = ready.element("#session-id").text
    assert UUID.match(session_id)
    assert ready.element("#session-status").text == "active"
    ready.set_code("print(x)\nx + 1")
    second = ready.run()
    assert ready.status() == "ok", ready.text(second, ".error")
    assert ready.text(second, ".stdout") == "41\n"
    assert ready.text(second, ".result") == "42"
    assert ready.text(second, ".run-label") == "Cell 2"
    assert ready.text(first, ".stdout") == "set\n"  # the first cell stays on the page
    ready.screenshot("11-session-cells.png")

    ready.element("#session-end").click()
    ready.wait(lambda: ready.element("#session-status").text == "terminated", "the session ended")
    assert "ended: deleted" in ready.element("#session-detail").text
    ready.screenshot("12-session-ended.png")
    ready.check_clean()


def test_a_session_ended_elsewhere_is_reported(ready: Page) -> None:
    Select(ready.element("#mode")).select_by_value("session")
    ready.set_code("y = 1")
    run = ready.run()
    assert ready.status() == "ok", ready.text(run, ".error")
    session_id = ready.element("#session-id").text
    # Another client (another tab, the CLI) ends it.
    auth = {"Authorization": f"Bearer {ready.server.key}"}
    ended = httpx.delete(f"{ready.server.url}/v1/sessions/{session_id}", headers=auth, timeout=30)
    assert ended.status_code == 204
    ready.set_code("print(y)")
    run = ready.run()
    assert ready.status() == "error"
    error = ready.text(run, ".error")
    assert error.startswith("410 session_terminated"), error
    ready.wait(lambda: ready.element("#session-status").text == "terminated", "the new status")
    assert "deleted" in ready.element("#session-detail").text
    ready.screenshot("13-session-gone.png")
    ready.check_clean(allowed_failures=(410,))


def test_a_rate_limited_key_is_told_when_to_retry(ready: Page, workdir: Path) -> None:
    try:
        check_rate_limited(ready, new_key(workdir, "playground-limited", 1))
    finally:
        ready.enter_key(ready.server.key)


def check_rate_limited(ready: Page, key: str) -> None:
    ready.enter_key(key)
    ready.wait_for_runtimes()  # GET /v1/runtimes: the minute's one request
    ready.set_code("print('over the limit')")
    run = ready.run()
    assert ready.status() == "error"
    error = ready.text(run, ".error")
    assert error.startswith("429 rate_limited"), error
    assert re.search(r"retry after \d+ s$", error), error
    assert ready.element("#message").get_attribute("hidden")  # the runtimes were answered
    ready.screenshot("14-rate-limited.png")
    ready.check_clean(allowed_failures=(429,))


def test_a_busy_session_is_explained(ready: Page) -> None:
    Select(ready.element("#mode")).select_by_value("session")
    ready.set_code("z = 0")
    run = ready.run()
    assert ready.status() == "ok", ready.text(run, ".error")
    session_id = ready.element("#session-id").text
    url = f"{ready.server.url}/v1/sessions/{session_id}/executions"
    auth = {"Authorization": f"Bearer {ready.server.key}"}
    # Another client holds the session with a long call while the page runs its cell.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        other = pool.submit(
            httpx.post, url, json={"code": "import time; time.sleep(8)"}, headers=auth, timeout=60
        )
        time.sleep(2)  # its call has begun: it takes 8 s
        ready.set_code("print(z)")
        run = ready.run()
        assert other.result().status_code == 200
    error = ready.text(run, ".error")
    assert error.startswith("409 session_busy"), error
    assert ready.element("#session-status").text == "active"  # the session goes on
    ready.screenshot("15-session-busy.png")
    run = ready.run()
    assert ready.status() == "ok", ready.text(run, ".error")
    assert ready.text(run, ".stdout") == "0\n"
    ready.element("#session-end").click()
    ready.wait(lambda: ready.element("#session-status").text == "terminated", "the session ended")
    ready.check_clean(allowed_failures=(409,))


def test_without_the_editor_a_plain_textarea_runs(page: Page) -> None:
    # The vendored files refused by the browser: the state of a machine set up without
    # scripts/vendor-web-assets, as the page's script meets it.
    page.driver.execute_cdp_cmd("Network.enable", {})
    page.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/static/vendor/*"]})
    try:
        page.driver.get(f"{page.server.url}/")
        page.wait(lambda: page.js("return document.readyState") == "complete", "the page loads")
        assert page.driver.find_elements(By.CSS_SELECTOR, ".CodeMirror") == []
        assert "scripts/vendor-web-assets" in page.element("#editor-note").text
        page.wait_for_runtimes()
        Select(page.element("#mode")).select_by_value("run")
        area = page.element("#code")
        area.clear()
        before = page.newest()
        area.send_keys("print(6 * 7)")
        area.send_keys(Keys.CONTROL, Keys.ENTER)
        run = page.finish(before)
        assert page.status() == "ok", page.text(run, ".error")
        assert page.text(run, ".stdout") == "42\n"
        page.screenshot("16-plain-editor.png")
        fresh = console_errors(page.driver)
        unexpected = [e for e in fresh if "ERR_BLOCKED_BY_CLIENT" not in str(e["message"])]
        assert unexpected == [], unexpected
        assert foreign_resources(page.driver, page.server.url) == []
    finally:
        page.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


def test_nothing_broke_the_policy_in_the_whole_run(page: Page) -> None:
    page.check_clean()
    assert not [e for e in page.console if "Content Security Policy" in str(e.get("message"))]
