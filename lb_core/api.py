"""The BBB API as the load balancer sees it: requests in, answers out, and which call is what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lb_core import bbbxml
from lb_core.config import IntegrationConfig
from lb_core.errors import ApiError
from lb_core.query import RawQuery

API_PREFIX = "/bigbluebutton/api"
CALLBACK_PREFIX = "/bigbluebutton/lb/callback/"

# How each call is handled; the README's table of calls is written from this.
ROUTED = {
    "end", "isMeetingRunning", "getMeetingInfo", "insertDocument", "sendChatMessage", "setConfigXML",
}
RECORDING_ROUTED = {
    "publishRecordings", "deleteRecordings", "updateRecordings", "getRecordingTextTracks", "putRecordingTextTrack",
}
MERGED = {"getMeetings", "getRecordings"}
LOCAL = {"getServers", "getMeetingEvents"}
SPECIAL = {"create", "join", "getDefaultConfigXML"}
KNOWN_CALLS = ROUTED | RECORDING_ROUTED | MERGED | LOCAL | SPECIAL
JSON_CALLS = {"getRecordingTextTracks", "putRecordingTextTrack"}

# HTTP methods each call answers, as bbb-web routes them (UrlMappings): a call that only reads its
# query (join, publishRecordings, deleteRecordings) is GET-only there, so a POST must not act.
DEFAULT_METHODS = frozenset({"GET", "POST", "HEAD"})
GET_ONLY = frozenset({"GET", "HEAD"})
ALLOWED_METHODS = {name: GET_ONLY for name in ("join", "publishRecordings", "deleteRecordings")}


def allowed_methods(name: str) -> frozenset[str]:
    return ALLOWED_METHODS.get(name, DEFAULT_METHODS)


FORM = "application/x-www-form-urlencoded"
ALLOWED_CONTENT_TYPES = {
    "create": {FORM, "multipart/form-data", "application/xml", "text/xml"},
    "insertDocument": {"application/xml", "text/xml"},
    "putRecordingTextTrack": {"multipart/form-data"},
}
DEFAULT_CONTENT_TYPES = {FORM, "multipart/form-data"}


@dataclass(slots=True)
class Request:
    """An HTTP request as received; ``headers`` is looked up with lower-case names (case-insensitively)."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(slots=True)
class Call:
    """A verified API call: the query as signed (checksum removed) and who signed it."""

    name: str
    method: str
    query: RawQuery
    pairs: list[tuple[str, str]]
    body: bytes | None
    content_type: str
    integration: IntegrationConfig
    client_ip: str
    forwarded_for: str = ""
    content_type_header: str = ""  # as sent, parameters (a multipart boundary) included

    def param(self, key: str, default: str = "") -> str:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)

    def meta(self) -> dict[str, str]:
        """``meta_*`` parameters with lower-cased keys, as BBB stores metadata."""
        return {k[5:].lower(): v for k, v in self.pairs if k.lower().startswith("meta_")}


@dataclass(slots=True)
class Answer:
    """The HTTP answer plus what the LB decided, for logs, metrics and mitmweb."""

    status: int
    body: bytes
    headers: dict[str, str]
    call: str = ""
    integration: str = ""
    meeting_id: str = ""
    checksum: str = "n/a"
    route: str = "local"
    server: str = ""
    result: str = ""
    decision: dict[str, Any] | None = None
    backend: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def xml(cls, body: bytes, status: int = 200, **info: Any) -> Answer:
        return cls(status, body, dict(bbbxml.XML_HEADERS), **info)

    @classmethod
    def error(cls, error: ApiError, **info: Any) -> Answer:
        return cls.xml(error.to_xml(), error.status, result=error.message_key, **info)
