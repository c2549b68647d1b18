"""The exact-match prompt cache (issue 6). The pipeline uses :class:`PromptCache` only.

Modules: ``keys`` (canonical request hash, key layout), ``policy`` (effective settings, request
controls), ``store`` (Redis / in-process), ``flight`` (single flight), ``entry`` (what is stored),
``replay`` (a hit as JSON or SSE), ``assemble`` (a streamed miss as a cacheable answer),
``service`` (the facade).
"""

from gateway.cache.entry import CacheEntry
from gateway.cache.policy import STATUS_HEADER, CacheSettings
from gateway.cache.service import CachePlan, PendingWrite, PromptCache

__all__ = [
    "STATUS_HEADER",
    "CacheEntry",
    "CachePlan",
    "CacheSettings",
    "PendingWrite",
    "PromptCache",
]
