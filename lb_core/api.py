"""The BBB API as the load balancer sees it: requests in, answers out, and which call is what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lb_core import bbbxml
from lb_core.config_sections import IntegrationConfig
from lb_core.errors import ApiError
from lb_core.query import RawQuery

API_PREFIX = "/bigbluebutton/api"
CALLBACK_PREFIX = "/bigbluebutton/lb/callback/"

FORM = "application/x-www-form-urlencoded"


@dataclass(slots=True)
class Request:
    """An HTTP request as received; ``headers`` is looked up with lower-case names (case-insensitively)."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    client_ip: str
    spool: str | None = None  # a recording upload's body, written to this file as it arrived

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
    """The HTTP answer only; what the LB decided on the way is in the request's ``Trace``."""

    status: int
    body: bytes
    headers: dict[str, str]

    @classmethod
    def xml(cls, body: bytes, status: int = 200) -> Answer:
        return cls(status, body, dict(bbbxml.XML_HEADERS))

    @classmethod
    def error(cls, error: ApiError) -> Answer:
        return cls.xml(error.to_xml(), error.status)
