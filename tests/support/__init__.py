"""Helpers shared by the test suites: real services, misbehaving upstreams."""
