"""API keys: generation, storage (hashes only) and the hot-path resolver from key to team."""
