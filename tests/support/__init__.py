"""Shared test support: helpers that more than one test module (or conftest.py) uses.

One job a module; import from the module itself (``from tests.support.polling import
eventually``). Fixtures stay in ``tests/conftest.py``; what they are made of lives here. Test
modules never import one another: what two of them share belongs here.
"""

__all__: list[str] = []
