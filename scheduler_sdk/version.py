"""The SDK version, sent as ``version`` in ``node_register``."""

__version__ = "0.1.0"
