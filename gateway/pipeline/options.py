"""Per-request controls a client sends as headers (the body stays OpenAI's own)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import InvalidRequest

_MAX_TAGS = 16
_MAX_TAG_CHARS = 64


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """``x-tollgate-*`` request headers, checked."""

    tags: dict[str, str] = field(default_factory=dict)
    slo_ttft_ms: float | None = None
    deployment: str | None = None


NO_OPTIONS = RequestOptions()


def parse_options(headers: Mapping[str, str]) -> RequestOptions:
    """Read the controls; a malformed one is a 400 naming the header."""
    tags_text = headers.get("x-tollgate-tags")
    slo_text = headers.get("x-tollgate-slo-ttft-ms")
    deployment = headers.get("x-tollgate-deployment")
    if tags_text is None and slo_text is None and deployment is None:
        return NO_OPTIONS
    return RequestOptions(
        tags=_tags(tags_text) if tags_text else {},
        slo_ttft_ms=_positive("x-tollgate-slo-ttft-ms", slo_text) if slo_text else None,
        deployment=deployment.strip() or None if deployment else None,
    )


def _tags(text: str) -> dict[str, str]:
    """``feature=search,env=prod`` -> a small, bounded dict (tags land in the ledger)."""
    tags: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or len(name) > _MAX_TAG_CHARS or len(value) > _MAX_TAG_CHARS:
            raise InvalidRequest(
                f"Invalid x-tollgate-tags: {part[:80]!r}; expected name=value pairs separated by "
                f"commas, each at most {_MAX_TAG_CHARS} characters.",
                param="x-tollgate-tags",
            )
        tags[name] = value
    if len(tags) > _MAX_TAGS:
        raise InvalidRequest(
            f"Invalid x-tollgate-tags: at most {_MAX_TAGS} tags.", param="x-tollgate-tags"
        )
    return tags


def _positive(header: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidRequest(f"Invalid {header}: expected a positive number.", param=header)
    return value
