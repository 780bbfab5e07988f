"""End-to-end tests: whole rendered stacks run as local pods (tests/podrunner)."""
