"""The image is built from a hash-locked, current lock, in layers that cache, and says what it is.

Offline (no registry, no index, no docker):

- requirements.lock (scripts/lock: uv from pyproject.toml's dependencies) pins every runtime
  dependency of pyproject.toml to one exact version its specifier admits, every entry with its
  sha256 hashes, and nothing pyproject.toml no longer asks for; its `via` graph is whole (each
  parent locked, each entry reached from pyproject.toml); and it is closed under the
  dependencies the installed distributions declare (.venv's metadata, wherever .venv holds the
  locked version): a dependency added upstream or in pyproject.toml without relocking shows;
- a lock with a fault in it (a dependency dropped, a hash dropped, a pin outside its
  specifier) is refused by the same checks, so that a clean lock means something;
- requirements-sbom.lock: the SBOM tool (cyclonedx-bom, at scripts/lock's version), hashed;
- cluster/Dockerfile: the base image's digest a build argument that goes into FROM, the lock
  installed with --require-hashes before any source is copied, the project on top with
  --no-deps, OCI labels (its version pyproject.toml's), an SBOM from cyclonedx-bom (installed
  from its own lock) in the image.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.support.paths import CLUSTER, REPO

LOCK = REPO / "requirements.lock"
SBOM_LOCK = REPO / "requirements-sbom.lock"
ROOT_VIA = "exec-agent (pyproject.toml)"
"""How uv names pyproject.toml as the parent of a direct dependency."""
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass
class Locked:
    name: str
    version: str
    marker: Marker | None
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Locked]:
    """requirements.lock as uv writes it: ``name==version [; marker] \\``, its ``--hash`` lines,
    then ``# via parent`` or ``# via`` and one ``#   parent`` a line. The lock is universal: a
    distribution may have one entry per platform (numpy for Python 3.11 and for 3.12 and later);
    the entries kept are those of the platform of this interpreter (Linux, CPython 3.11, as the
    image's), each checked as it is read."""
    entries: dict[str, Locked] = {}
    current: Locked | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not line.startswith((" ", "#")):
            spec = stripped.removesuffix("\\").strip()
            requirement, _, marker = spec.partition(";")
            name, sep, version = requirement.strip().partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+!]*", version), f"not a pin: {line!r}"
            key = canonicalize_name(name)
            current = Locked(key, version, Marker(marker.strip()) if marker.strip() else None)
            if applies(current.marker):
                assert key not in entries, f"{name} locked twice for this platform"
                entries[key] = current
            in_via = False
            continue
        if current is None:  # the header
            continue
        if stripped.startswith("--hash="):
            assert HASH.fullmatch(stripped.removesuffix("\\").strip()), f"{current.name}: {line}"
            current.hashes.append(stripped.removesuffix("\\").strip())
        elif stripped == "# via":
            in_via = True
        elif stripped.startswith("# via "):
            current.via.add(stripped.removeprefix("# via ").strip())
        elif in_via and stripped.startswith("#   "):
            current.via.add(stripped.removeprefix("#   ").strip())
        else:
            raise AssertionError(f"unexpected line in the lock: {line!r}")
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def applies(marker: Marker | None, extra: str = "") -> bool:
    """Whether a marker holds on the image's platform (Linux, CPython 3.11: as here)."""
    return marker is None or marker.evaluate({"extra": extra})


def lock_problems(lock: dict[str, Locked], roots: list[Requirement]) -> list[str]:
    """What is wrong with ``lock`` for pyproject.toml's ``roots``; empty when nothing."""
    problems: list[str] = []
    for entry in lock.values():
        if not entry.hashes:
            problems.append(f"{entry.name}: no hash")
        for digest in entry.hashes:
            if not HASH.fullmatch(digest):
                problems.append(f"{entry.name}: {digest!r} is no sha256 hash")
        if not entry.via:
            problems.append(f"{entry.name}: no parent (`# via`)")
        for parent in entry.via - {ROOT_VIA}:
            if canonicalize_name(parent) not in lock:
                problems.append(f"{entry.name}: its parent {parent} is not locked")
    direct = {canonicalize_name(r.name) for r in roots if applies(r.marker)}
    for requirement in roots:
        key = canonicalize_name(requirement.name)
        if key not in lock:
            problems.append(f"{requirement}: not locked")
        elif not requirement.specifier.contains(Version(lock[key].version), prereleases=True):
            problems.append(f"{requirement}: locked at {lock[key].version}")
    for entry in lock.values():
        if ROOT_VIA in entry.via and entry.name not in direct:
            problems.append(f"{entry.name}: locked for pyproject.toml, which no longer asks for it")
    # Every entry reached from pyproject.toml through the `via` graph.
    children: dict[str, set[str]] = {}
    for entry in lock.values():
        for parent in entry.via:
            children.setdefault(canonicalize_name(parent), set()).add(entry.name)
    seen: set[str] = set()
    queue = deque(children.get(canonicalize_name(ROOT_VIA), set()))
    while queue:
        name = queue.popleft()
        if name not in seen:
            seen.add(name)
            queue.extend(children.get(name, set()))
    problems.extend(f"{name}: reached from nothing" for name in sorted(set(lock) - seen))
    return problems


def closure_problems(
    lock: dict[str, Locked], roots: list[Requirement]
) -> tuple[list[str], set[str]]:
    """Follow the declared dependencies (Requires-Dist, with the extras asked for) from
    pyproject.toml through every locked distribution .venv holds at the locked version: each
    one that applies on the image's platform must be locked at a version it admits. Returns the
    problems and the distributions followed."""
    problems: list[str] = []
    followed: set[tuple[str, str]] = set()
    queue = deque((requirement, "", "pyproject.toml") for requirement in roots)
    while queue:
        requirement, extra, parent = queue.popleft()
        if not applies(requirement.marker, extra):
            continue
        key = canonicalize_name(requirement.name)
        entry = lock.get(key)
        if entry is None:
            problems.append(f"{requirement} (of {parent}): not locked")
            continue
        if not requirement.specifier.contains(Version(entry.version), prereleases=True):
            problems.append(f"{requirement} (of {parent}): locked at {entry.version}")
        for wanted in {"", *requirement.extras}:
            if (key, wanted) in followed:
                continue
            try:
                distribution = importlib.metadata.distribution(key)
            except importlib.metadata.PackageNotFoundError:
                continue
            if canonicalize_name(distribution.metadata["Name"]) != key:
                continue
            if Version(distribution.version) != Version(entry.version):
                continue  # another version here: its dependencies may differ from the locked one's
            followed.add((key, wanted))
            for declared in distribution.requires or []:
                queue.append((Requirement(declared), wanted, f"{key} {entry.version}"))
    return problems, {key for key, _ in followed}


# --------------------------------------------------------------------------- the lock


def test_the_lock_is_pyprojects_dependencies_with_hashes() -> None:
    lock = parse_lock(LOCK.read_text())
    assert len(lock) > 50, "ray[serve,data] alone needs dozens of distributions"
    assert lock_problems(lock, runtime_requirements()) == []


def test_the_lock_is_closed_under_the_declared_dependencies() -> None:
    lock = parse_lock(LOCK.read_text())
    roots = runtime_requirements()
    problems, followed = closure_problems(lock, roots)
    assert problems == []
    # Never vacuous: what pyproject.toml pins exactly (ray, OpenTelemetry) .venv holds at that
    # version, so at least those and what they need are followed. How much more depends on how
    # far upstream releases have moved .venv (scripts/setup) from the lock: scripts/lock --upgrade.
    exact = {
        canonicalize_name(r.name) for r in roots if any(s.operator == "==" for s in r.specifier)
    }
    assert exact and exact <= followed, sorted(exact - followed)
    assert len(followed) > len(exact)


def test_a_faulty_lock_is_refused() -> None:
    text = LOCK.read_text()
    roots = runtime_requirements()
    lock = parse_lock(text)

    # A dependency dropped (its entry gone): pyproject.toml's, or one of ray's.
    for dropped in ("redis", "aiohttp"):
        broken = dict(lock)
        del broken[dropped]
        assert lock_problems(broken, roots) or closure_problems(broken, roots)[0], dropped
    # An entry without its hashes.
    unhashed = parse_lock(text)
    unhashed["redis"].hashes.clear()
    assert "redis: no hash" in lock_problems(unhashed, roots)
    # ray pinned where pyproject.toml does not allow it.
    moved = parse_lock(text)
    moved["ray"].version = "2.59.0"
    assert any("locked at 2.59.0" in p for p in lock_problems(moved, roots))
    # A dependency pyproject.toml no longer asks for.
    fewer = [r for r in roots if canonicalize_name(r.name) != "cachetools"]
    assert any("no longer asks" in p for p in lock_problems(lock, fewer))
    # Something not pinned.
    try:
        parse_lock(text.replace("redis==", "redis>=", 1))
    except AssertionError as exc:
        assert "not a pin" in str(exc)
    else:
        raise AssertionError("an unpinned requirement was parsed")


def test_the_sbom_tool_is_locked_with_hashes() -> None:
    """The SBOM's tool runs in the build with the project's sources at hand: hash-locked too,
    at the version scripts/lock asks for."""
    (tool,) = re.findall(r'^SBOM_TOOL="([^"]+)"', (REPO / "scripts/lock").read_text(), re.M)
    wanted = Requirement(tool)
    lock = parse_lock(SBOM_LOCK.read_text())
    assert lock[canonicalize_name(wanted.name)].version in wanted.specifier
    assert all(entry.hashes for entry in lock.values())
    problems, _ = closure_problems(lock, [wanted])
    assert problems == []
    assert "#    scripts/lock" in SBOM_LOCK.read_text().splitlines()[1]


def test_scripts_lock_makes_the_lock() -> None:
    script = (REPO / "scripts/lock").read_text()
    assert Path(REPO / "scripts/lock").stat().st_mode & 0o111, "scripts/lock is executable"
    for option in ("--generate-hashes", "--universal", "--python-version 3.11", "--no-config"):
        assert option in script, option
    assert 'compile pyproject.toml requirements.lock "$@"' in script
    assert "--output-file" in script
    assert "#    scripts/lock" in LOCK.read_text().splitlines()[1]


# --------------------------------------------------------------------------- the Dockerfile


def instructions() -> list[tuple[str, str]]:
    """cluster/Dockerfile's instructions in order: (INSTRUCTION, arguments), continuations
    joined, comments left out."""
    text = (CLUSTER / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            found.append((name.upper(), " ".join(rest.split())))
    return found


def index(found: list[tuple[str, str]], name: str, needle: str) -> int:
    matches = [i for i, (n, value) in enumerate(found) if n == name and needle in value]
    assert matches, f"no {name} with {needle!r}"
    return matches[0]


def test_the_base_image_is_pinned_by_a_digest_argument() -> None:
    found = instructions()
    (base,) = [value for name, value in found if name == "FROM"]
    assert base == "${BASE_IMAGE}${BASE_IMAGE_DIGEST:+@}${BASE_IMAGE_DIGEST}"
    before = found[: index(found, "FROM", "BASE_IMAGE")]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in before
    assert ("ARG", "BASE_IMAGE_DIGEST=") in before
    # The lock is resolved for the base image's Python.
    assert "--python-version 3.11" in (REPO / "scripts/lock").read_text()


def test_dependencies_are_installed_from_the_lock_before_the_sources() -> None:
    found = instructions()
    lock_copied = index(found, "COPY", "requirements.lock")
    installed = index(found, "RUN", "-r requirements.lock")
    assert "--require-hashes" in found[installed][1]
    sources = [
        i
        for i, (name, value) in enumerate(found)
        if name == "COPY"
        and re.search(r"\b(executors|serve_app|pyproject\.toml)\b", value)
        and "_runtimes" not in value
    ]
    assert sources and lock_copied < installed < min(sources), "the lock's layer comes first"
    project = index(found, "RUN", "pip install --no-cache-dir .")
    assert "--no-deps" in found[project][1].split()
    assert project > max(sources)
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "!requirements.lock" in ignored


def test_the_image_has_oci_labels_and_an_sbom() -> None:
    found = instructions()
    labels = " ".join(value for name, value in found if name == "LABEL")
    pairs = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', labels))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert pairs["org.opencontainers.image.version"] == version
    assert pairs["org.opencontainers.image.title"] == "exec-agent"
    for key in ("revision", "created", "source", "base.name", "base.digest", "description"):
        assert f"org.opencontainers.image.{key}" in pairs, key
    sbom = index(found, "RUN", "cyclonedx-py environment")
    command = found[sbom][1]
    assert "/usr/share/doc/exec-agent/sbom.cdx.json" in command
    assert "/opt/venv/bin/python" in command, "the SBOM describes the service's environment"
    assert "--require-hashes -r requirements-sbom.lock" in command
    assert index(found, "COPY", "requirements-sbom.lock") < sbom
    assert sbom > index(found, "RUN", "pip install --no-cache-dir ."), "after the last install"
