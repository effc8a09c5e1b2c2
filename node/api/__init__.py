"""The node's HTTP API: an ASGI app over a :class:`NodeFacade`, served on Hypercorn-Trio."""

from node.api.app import ApiSettings, create_app, parse_hex, read_body
from node.api.auth import (
    AuthError,
    BadRequestSignatureError,
    ReplayCache,
    ReplayCacheFullError,
    ReplayedRequestError,
    StaleRequestError,
    verify_signed_request,
)
from node.api.errors import error_body, status_of
from node.api.facade import BlockView, NodeFacade, NodeStatus, NotReadyError, TxState, TxStatus
from node.api.render import to_jsonable
from node.api.server import ServerSettings, serve_api

__all__ = [
    "ApiSettings",
    "AuthError",
    "BadRequestSignatureError",
    "BlockView",
    "NodeFacade",
    "NodeStatus",
    "NotReadyError",
    "ReplayCache",
    "ReplayCacheFullError",
    "ReplayedRequestError",
    "ServerSettings",
    "StaleRequestError",
    "TxState",
    "TxStatus",
    "create_app",
    "error_body",
    "parse_hex",
    "read_body",
    "serve_api",
    "status_of",
    "to_jsonable",
    "verify_signed_request",
]
