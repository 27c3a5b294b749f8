"""Shared test support: helpers that more than one test module (or conftest.py) uses.

One job a module; import from the module itself (``from tests.support.polling import
eventually``). Fixtures stay in ``tests/conftest.py``; what they are made of lives here. Test
modules never import one another: what two of them share belongs here. conftest.py marks this
package for pytest's assertion rewriting, so its asserts explain their failures as tests' do.

The sandbox engine: ``watched_pool`` (pools checked against the corpus' invariants),
``canary`` (the planted secret), ``processes`` (host process snapshots), ``corpus`` and
``corpus_checks`` (the adversarial corpus and each entry's expectation), ``interpreters``,
``limits``, ``statuses``.

The service: ``service`` (deployed on the session's Ray), ``api`` (requests as clients make
them), ``asgi`` (an app called in-process), ``stand_ins`` (executor handles), ``cli`` (the
command line in-process), ``settings``, ``databases``, ``shared_redis``, ``private_servers``,
``cluster`` (cluster/'s files), ``scripts`` (scripts/ as modules), ``ray_nodes`` (a Ray
cluster of several ``ray start`` nodes on this machine, stopped or killed by process ids).

Plumbing: ``polling`` (waiting for a condition), ``ports``, ``listeners``, ``paths``.
"""

__all__: list[str] = []
