"""The secrets' way to the API ingress, and only there: a private directory of files.

Ray keeps what is bound to a deployment (and its ``runtime_env``) in its GCS, readable from
every node, the sandbox nodes included; the replicas and the session hosts inherit the
environment of the raylet that starts them. So no secret is bound nor left in the environment
of a Ray that ``exec-agent serve`` starts: the driver writes its resolved secrets into a
directory of its own (0700, files 0600), binds only the directory's path, and the ingress reads
it as its ``SECRETS_DIR`` (:func:`serve_app.settings.with_secrets`). On Kubernetes the Secret is
mounted as that directory into the API pods alone, and nothing here is used.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, MutableMapping

from serve_app.settings import Settings, env_name, secret_keys, secret_settings

__all__ = [
    "INGRESS_SECRETS",
    "private_secrets",
    "process_secrets_dir",
    "scrub_secret_environment",
    "write_secrets",
]

CLIENT_ONLY_SECRETS = frozenset({"exec_agent_api_key"})
"""Secret settings of the command line as a client: the service never reads them."""
INGRESS_SECRETS = tuple(name for name in secret_settings() if name not in CLIENT_ONLY_SECRETS)
"""The secret settings the ingress reads (attribute names)."""


def write_secrets(settings: Settings, directory: str) -> None:
    """One file per secret of :data:`INGRESS_SECRETS` in ``directory``, named as its variable
    (``API_KEY_SECRET``), mode 0600; an unset one as an empty file, so that the ingress's own
    environment cannot fill it in."""
    for name in INGRESS_SECRETS:
        value = getattr(settings, name)
        if value is not None and hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        path = os.path.join(directory, env_name(name))
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write("" if value is None else str(value))


@contextlib.contextmanager
def private_secrets(settings: Settings) -> Iterator[str]:
    """A new private directory (0700) of ``settings``' secrets (:func:`write_secrets`),
    removed when the block ends."""
    directory = tempfile.mkdtemp(prefix="exec-agent-secrets-")
    try:
        write_secrets(settings, directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def process_secrets_dir(settings: Settings) -> str:
    """A new private directory of ``settings``' secrets that lives as long as this process
    (removed at its exit): for an application deployed from here with full settings, whose
    ingress replicas may restart and read it again at any time meanwhile."""
    directory = tempfile.mkdtemp(prefix="exec-agent-secrets-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    write_secrets(settings, directory)
    return directory


def scrub_secret_environment(environ: MutableMapping[str, str]) -> list[str]:
    """Remove every variable of a secret setting (any of its names, any case) from
    ``environ``, before a local Ray starts: its raylet, and every worker it starts, would
    inherit them. The variables removed (their names)."""
    names = secret_keys()
    removed = [variable for variable in environ if variable.lower() in names]
    for variable in removed:
        del environ[variable]
    return removed
