"""The one table of BBB calls the LB answers: each handler registers itself with ``@bbb_call``.

A call's name, HTTP methods, accepted body types, JSON-ness, whether it uploads files and how it is
routed are declared on its handler, and nowhere else: the gateway dispatches from this table, the verifier checks methods and
content types from it, metrics label by it and a test checks the README's call table against it.
Read it through ``lb_core.handlers`` (importing that package registers every handler).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lb_core.api import FORM, Answer

if TYPE_CHECKING:
    from lb_core.handlers.context import Context

Handler = Callable[["Context"], Awaitable[Answer]]

# HTTP methods each call answers, as bbb-web routes them (UrlMappings): a call that only reads its
# query (join, publishRecordings, deleteRecordings) is GET-only there, so a POST must not act.
DEFAULT_METHODS = frozenset({"GET", "POST", "HEAD"})
GET_ONLY = frozenset({"GET", "HEAD"})
DEFAULT_CONTENT_TYPES = frozenset({FORM, "multipart/form-data"})
ROUTES = ("placed", "redirect", "routed", "routed per ID", "merged", "local", "index")


@dataclass(frozen=True, slots=True)
class CallSpec:
    name: str
    handler: Handler
    methods: frozenset[str]
    content_types: frozenset[str]  # of a POST body; the checksum is not even looked at otherwise
    json: bool  # BBB answers this call in JSON (its errors too)
    upload: bool  # carries files: the large body limit (limits.max_upload_bytes), read only once signed
    route: str  # how the README's call table describes it: one of ROUTES


CALLS: dict[str, CallSpec] = {}


def bbb_call(*names: str, methods: frozenset[str] | tuple[str, ...] = DEFAULT_METHODS,
             content_types: frozenset[str] | tuple[str, ...] = DEFAULT_CONTENT_TYPES, json: bool = False,
             upload: bool = False, route: str = "routed") -> Callable[[Handler], Handler]:
    """Register the decorated handler for each of ``names`` (calls handled alike share one handler)."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}")

    def register(handler: Handler) -> Handler:
        for name in names:
            if name in CALLS:
                raise ValueError(f"{name} is registered twice")
            CALLS[name] = CallSpec(name, handler, frozenset(methods), frozenset(content_types), json, upload, route)
        return handler

    return register


def is_upload(name: str) -> bool:
    """Whether ``name`` is a known call that carries files (an unknown one gets the small body limit)."""
    spec = CALLS.get(name)
    return spec is not None and spec.upload


def allowed_methods(name: str) -> frozenset[str]:
    spec = CALLS.get(name)
    return spec.methods if spec is not None else DEFAULT_METHODS
