"""Upstreams behind one interface (:class:`gateway.providers.base.Upstream`)."""
