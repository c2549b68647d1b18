"""The request path: :class:`Pipeline` joins the domain packages; nothing else does."""

from gateway.pipeline.core import Pipeline
from gateway.pipeline.results import JsonResult, StreamResult

__all__ = ["JsonResult", "Pipeline", "StreamResult"]
