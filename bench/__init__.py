"""Tollgate's load benchmarks (not tests): ``python -m bench.run`` or ``make bench``.

See ``bench/README.md`` for what is measured and how. Nothing here is imported by the gateway.
"""
