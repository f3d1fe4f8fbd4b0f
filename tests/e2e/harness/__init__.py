"""The end-to-end harness: real scheduler processes and the peers that talk to them.

- ``processes``: daphne instances on free loopback ports, ``manage.py``, stopping process trees.
- ``deployment``: a ``Deployment`` (instances sharing a database and key prefixes, with
  credentials made by the real commands) and a ``System`` (one instance, a whole scheduler).
- ``raw``: raw WebSocket peers, ``http``: the HTTP API, ``sdk``: SDK nodes and sessions and the
  ``Recorder`` that runs their jobs; ``peers``: ``Peers``, which closes whatever a test connected.
- ``balancer``: a load balancer in front of several instances.

The fixtures that use them are in ``tests/e2e/conftest.py``, and ``daphne_factory`` in the root
``conftest.py``.
"""
