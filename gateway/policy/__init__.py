"""Routing and budget policy: YAML files validated into one immutable :class:`Policy`."""

from gateway.policy.schema import Policy

__all__ = ["Policy"]
