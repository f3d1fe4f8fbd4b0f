"""Test support shared by every app's tests: key clean-up, free ports, in-process peers.

Support for one app's tests lives in that app's ``tests`` package; the end-to-end harness
(real daphne processes and raw WebSocket peers) in ``tests/e2e/harness``.
"""
