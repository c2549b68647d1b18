"""The simulated OpenAI-compatible model: the gateway's test double and the benchmarks' upstream.

``engine`` holds every behaviour (parsing, timing, errors, response bodies, SSE events);
``server`` serves it over HTTP (``tollgate sim``) and ``gateway.providers.sim`` in process.
"""
