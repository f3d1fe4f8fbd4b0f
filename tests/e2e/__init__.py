"""End-to-end tests: real daphne processes, real WebSockets, the real local Redis Cluster."""
