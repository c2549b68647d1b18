"""Tollgate: an OpenAI-compatible gateway that routes, budgets, caches and accounts for LLM
calls."""

__version__ = "0.1.0"
