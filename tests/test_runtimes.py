"""Runtimes and artifacts in the engine (API.md, "Runtimes" and "Artifacts").

The hostile side (tampering with preloaded modules, BLAS thread bombs, memory through numpy and
pandas, the read-only site-packages, and every trick against the artifact collector) is in the
security corpus (tests/data/security_corpus.json, categories ``runtime`` and ``artifacts``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import re
import struct
import zlib
from pathlib import Path

import pytest

from executors import (
    MINIMAL,
    RUNTIMES,
    SCIENTIFIC,
    ExecutionRecord,
    ExecutionRequest,
    RuntimeNotInstalledError,
    SandboxConfig,
    SandboxStartError,
    runtime_catalog,
)
from executors._sandbox import _artifacts as artifacts_module
from executors._sandbox._artifacts import MAX_DEPTH, collect_artifacts
from tests.support.limits import CORPUS_LIMITS
from tests.support.processes import host_processes, slot_zygotes
from tests.support.statuses import INTERNAL_ERROR, NONZERO_EXIT, OK
from tests.support.watched_pool import PoolFactory, WatchedPool

pytestmark = pytest.mark.sandbox

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_ok(record: ExecutionRecord, stdout: str | None = None) -> None:
    assert (record.status, record.stderr) == (OK, ""), record
    if stdout is not None:
        assert record.stdout == stdout


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose header chunk is intact (its CRC checked)."""
    assert data.startswith(PNG_SIGNATURE)
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    body, crc = data[16:29], struct.unpack(">I", data[29:33])[0]
    assert zlib.crc32(b"IHDR" + body) == crc
    width, height = struct.unpack(">II", body[:8])
    return width, height


# --- which environment a program runs in ------------------------------------------------------


def test_minimal_is_the_standard_library_alone(sandbox: WatchedPool) -> None:
    record = sandbox.run("import numpy", runtime=MINIMAL)
    assert record.status == NONZERO_EXIT
    assert "ModuleNotFoundError: No module named 'numpy'" in record.stderr
    assert record.runtime == MINIMAL


def test_scientific_has_its_modules_loaded_before_the_program_starts(
    sandbox: WatchedPool,
) -> None:
    preload = RUNTIMES[SCIENTIFIC].preload
    code = f"import sys; print([m for m in {list(preload)!r} if m in sys.modules])"
    record = sandbox.run(code, runtime=SCIENTIFIC)
    assert_ok(record, f"{list(preload)!r}\n")
    assert record.runtime == SCIENTIFIC


def test_a_request_naming_no_runtime_gets_the_pools_default(sandbox: WatchedPool) -> None:
    record = sandbox.run("import numpy; print(numpy.arange(4).sum())")
    assert_ok(record, "6\n")
    assert record.runtime == sandbox.pool.config.default_runtime == SCIENTIFIC


def test_the_packages_loaded_on_demand_work(sandbox: WatchedPool) -> None:
    code = (
        "import sympy, networkx, scipy.stats, sklearn.linear_model, PIL.Image\n"
        "x = sympy.Symbol('x'); print(sympy.integrate(2 * x, x))\n"
        "print(networkx.shortest_path_length(networkx.path_graph(5), 0, 4))\n"
        "print(round(float(scipy.stats.norm.cdf(0)), 3))\n"
        "m = sklearn.linear_model.LinearRegression().fit([[0], [1], [2]], [1, 3, 5])\n"
        "print(round(float(m.coef_[0]), 3), PIL.Image.new('RGB', (3, 2)).size)\n"
    )
    assert_ok(sandbox.run(code, runtime=SCIENTIFIC), "x**2\n4\n0.5\n2.0 (3, 2)\n")


def test_the_zygotes_stay_single_threaded_after_preloading(sandbox: WatchedPool) -> None:
    """A fork copies only the calling thread: BLAS pools started at import would be lost."""
    if not sandbox.tracks_processes:
        pytest.skip("the slots' processes are told apart by uid only as root with bubblewrap")
    zygotes = slot_zygotes(host_processes(), sandbox.uids)
    assert len(zygotes) == sandbox.pool.size * len(RUNTIMES)
    for zygote in zygotes:
        threads = re.search(
            r"^Threads:\s+(\d+)$", Path(f"/proc/{zygote.pid}/status").read_text(), re.M
        )
        assert threads is not None and threads.group(1) == "1", zygote


# --- the runtimes as installed ------------------------------------------------------------------


def test_the_installed_runtime_holds_exactly_its_pins() -> None:
    site_packages = RUNTIMES[SCIENTIFIC].site_packages(SandboxConfig().runtimes_dir)
    assert site_packages is not None
    installed = {
        dist.metadata["Name"].lower(): dist.version
        for dist in importlib.metadata.distributions(path=[str(site_packages)])
    }
    pinned = {name.lower(): version for name, version in RUNTIMES[SCIENTIFIC].packages().items()}
    assert installed == pinned


def test_the_catalog_lists_every_runtime_with_its_versions() -> None:
    catalog = {info.name: info for info in runtime_catalog(default=SCIENTIFIC)}
    assert set(catalog) == {MINIMAL, SCIENTIFIC}
    assert [info.name for info in catalog.values() if info.default] == [SCIENTIFIC]
    assert catalog[MINIMAL].packages == {} and catalog[MINIMAL].preloaded == []
    packages = catalog[SCIENTIFIC].packages
    for name in ("numpy", "pandas", "scipy", "matplotlib", "sympy", "scikit-learn", "networkx"):
        assert re.fullmatch(r"\d+(\.\d+)+", packages[name]), (name, packages.get(name))
    assert "pillow" in {name.lower() for name in packages}
    assert "numpy" in catalog[SCIENTIFIC].preloaded


def test_a_runtime_that_is_not_installed_is_refused_at_start(
    pool_factory: PoolFactory, tmp_path: Path
) -> None:
    with pytest.raises(SandboxStartError, match="scripts/setup"):
        pool_factory(slots=1, runtimes_dir=str(tmp_path))
    with pytest.raises(RuntimeNotInstalledError):
        RUNTIMES[SCIENTIFIC].site_packages(tmp_path)


def test_a_runtime_that_cannot_start_fails_its_jobs_not_the_slot(
    pool_factory: PoolFactory, tmp_path: Path
) -> None:
    config = pool_factory.config(runtimes_dir=str(tmp_path), default_runtime=MINIMAL)
    pool = pool_factory.start(config, slots=1)
    try:
        request = ExecutionRequest(code="print(1)", limits=CORPUS_LIMITS)
        failed = pool.run(request.model_copy(update={"runtime": SCIENTIFIC}))
        assert (failed.status, failed.runtime) == (INTERNAL_ERROR, SCIENTIFIC)
        assert_ok(pool.run(request), "1\n")
    finally:
        pool.close()


# --- artifacts ------------------------------------------------------------------------------


def test_a_dataframe_and_a_plot_come_back_as_files(sandbox: WatchedPool) -> None:
    code = (
        "import pandas, matplotlib.pyplot as plt\n"
        "df = pandas.DataFrame({'x': range(10), 'y': [i * i for i in range(10)]})\n"
        "print(df.sum().to_dict())\n"
        "df.to_csv('out/table.csv', index=False)\n"
        "df.plot(x='x', y='y')\n"
        "plt.savefig('out/chart.png', dpi=50)\n"
    )
    record = sandbox.run(code, runtime=SCIENTIFIC)
    assert_ok(record, "{'x': 45, 'y': 285}\n")
    paths = [artifact.path for artifact in record.artifacts]
    # chart.png is still open at the end: saved once more as figure-1.png
    assert paths == ["out/chart.png", "out/figure-1.png", "out/table.csv"]
    chart, figure, table = record.artifacts
    assert (chart.media_type, figure.media_type, table.media_type) == (
        "image/png",
        "image/png",
        "text/csv",
    )
    assert png_size(chart.content()) == (320, 240)  # 6.4 x 4.8 inches at 50 dpi
    assert png_size(figure.content()) == (640, 480)
    assert table.content().decode().splitlines()[:2] == ["x,y", "0,0"]
    assert chart.size_bytes == len(base64.b64decode(chart.base64))
    assert not record.artifacts_truncated


def test_figures_are_saved_at_show_and_at_the_end(sandbox: WatchedPool) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.figure(); plt.plot([1, 2]); plt.figure(); plt.plot([2, 1])\n"
        "plt.show()\n"
        "print(plt.get_fignums())\n"
        "plt.figure(); plt.bar([1, 2], [3, 4])\n"
    )
    record = sandbox.run(code, runtime=SCIENTIFIC)
    assert_ok(record, "[]\n")
    assert [a.path for a in record.artifacts] == [f"out/figure-{n}.png" for n in (1, 2, 3)]
    for artifact in record.artifacts:
        assert png_size(artifact.content()) == (640, 480)


def test_out_starts_empty_and_only_its_regular_files_return(sandbox: WatchedPool) -> None:
    code = (
        "import os\n"
        "print(os.listdir('out'))\n"
        "os.makedirs('out/deep/er')\n"
        "open('out/deep/er/data.json', 'w').write('{}')\n"
        "open('out/b.txt', 'w').write('b')\n"
        "open('elsewhere.txt', 'w').write('not an artifact')\n"
    )
    record = sandbox.run(code)
    assert_ok(record, "[]\n")
    assert [(a.path, a.media_type, a.content()) for a in record.artifacts] == [
        ("out/b.txt", "text/plain", b"b"),
        ("out/deep/er/data.json", "application/json", b"{}"),
    ]


def test_past_max_artifacts_the_rest_are_left_out(sandbox: WatchedPool) -> None:
    code = "for n in range(25):\n    open(f'out/{n:02d}.bin', 'wb').write(bytes([n]))\n"
    record = sandbox.run(code, runtime=MINIMAL)
    assert_ok(record)
    assert [a.path for a in record.artifacts] == [f"out/{n:02d}.bin" for n in range(20)]
    assert record.artifacts[7].content() == bytes([7])
    assert record.artifacts_truncated
    assert record.status == OK  # a cap never changes the status


def test_past_max_artifact_bytes_the_rest_are_left_out(sandbox: WatchedPool) -> None:
    limits = sandbox.limits.model_copy(update={"max_artifact_bytes": 2500})
    code = "for name in 'abc':\n    open(f'out/{name}', 'wb').write(name.encode() * 1000)\n"
    record = sandbox.run(code, limits=limits)
    assert_ok(record)
    assert [(a.path, a.size_bytes) for a in record.artifacts] == [("out/a", 1000), ("out/b", 1000)]
    assert record.artifacts_truncated


def test_no_artifact_is_returned_when_none_is_allowed(sandbox: WatchedPool) -> None:
    limits = sandbox.limits.model_copy(update={"max_artifacts": 0})
    record = sandbox.run("open('out/a', 'w').write('a')", limits=limits)
    assert_ok(record)
    assert (record.artifacts, record.artifacts_truncated) == ([], True)


# --- files in ---------------------------------------------------------------------------------


def test_binary_files_arrive_byte_for_byte(sandbox: WatchedPool) -> None:
    blob = bytes(range(256)) * 4
    code = "import hashlib; print(hashlib.sha256(open('data/blob.bin', 'rb').read()).hexdigest())"
    record = sandbox.run(code, files={"data/blob.bin": blob, "note.txt": "text"}, runtime=MINIMAL)
    assert_ok(record, hashlib.sha256(blob).hexdigest() + "\n")


@pytest.mark.parametrize("path", ["out", "out/x.txt", "out/sub/y.png"])
def test_files_may_not_be_placed_under_out(sandbox: WatchedPool, path: str) -> None:
    with pytest.raises(ValueError, match="under out/"):
        sandbox.request("print(1)", files={path: "x"})


# --- the collector's bounds, on a directory of the host's (no job needed) ----------------------


def collect(workdir: Path, **caps: int) -> tuple[list[str], bool]:
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = collect_artifacts(
            fd, max_files=caps.get("max_files", 20), max_bytes=caps.get("max_bytes", 1 << 20)
        )
    finally:
        os.close(fd)
    return [artifact.path for artifact in found.files], found.truncated


def test_the_collector_goes_no_deeper_than_its_limit(tmp_path: Path) -> None:
    deep = tmp_path.joinpath("out", *(f"d{n}" for n in range(MAX_DEPTH + 2)))
    deep.mkdir(parents=True)
    (deep / "too-deep.txt").write_text("x")
    shallow = tmp_path.joinpath("out", *(f"d{n}" for n in range(MAX_DEPTH - 2)))
    (shallow / "deep-enough.txt").write_text("x")
    paths, truncated = collect(tmp_path)
    assert paths == ["/".join(["out", *(f"d{n}" for n in range(MAX_DEPTH - 2)), "deep-enough.txt"])]
    assert truncated


def test_the_collector_scans_a_bounded_number_of_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts_module, "MAX_SCANNED_ENTRIES", 50)
    (tmp_path / "out").mkdir()
    for n in range(60):
        (tmp_path / "out" / f"{n:02d}").write_text("x")
    paths, truncated = collect(tmp_path, max_files=100)
    assert len(paths) == 50 and truncated
    monkeypatch.setattr(artifacts_module, "MAX_SCANNED_ENTRIES", 60)
    paths, truncated = collect(tmp_path, max_files=100)
    assert len(paths) == 60 and not truncated


def test_the_collector_reads_no_file_past_the_bytes_left(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_bytes(b"a" * 600)
    (tmp_path / "out" / "b").write_bytes(b"b" * 600)
    assert collect(tmp_path, max_bytes=1000) == (["out/a"], True)
    assert collect(tmp_path, max_bytes=1200) == (["out/a", "out/b"], False)


def test_without_out_or_with_out_a_link_nothing_is_collected(tmp_path: Path) -> None:
    assert collect(tmp_path) == ([], False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_text("s")
    (tmp_path / "out").symlink_to(tmp_path / "elsewhere")
    assert collect(tmp_path) == ([], False)
