"""Checksum verification, as bbb-web does it, over what an anonymous caller sent.

Everything here runs before the caller is known, so it is bounded before it is done: sizes and
parameter counts are checked first, the checksum is verified over the raw bytes as sent, and the
body is decoded only once a secret has matched. Failures are typed (``errors.ChecksumMissing``,
``errors.ChecksumMismatch``) so the gateway's trace records them without reading messages.
"""

from __future__ import annotations

from lb_core import checksum, errors
from lb_core.api import FORM, Call, Request
from lb_core.calls import CallSpec
from lb_core.config import Config
from lb_core.errors import ApiError
from lb_core.integrations import Integrations
from lb_core.query import RawQuery

# Parameters that decide where a call goes or what it may do: two different values are refused, since
# the LB and the backend could each read a different one.
SINGLE_VALUED_PARAMS = ("meetingID", "recordID", "role", "record")


def conflicting_param(pairs: list[tuple[str, str]]) -> str | None:
    """The first routing parameter given twice with different values, if any."""
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key in SINGLE_VALUED_PARAMS and seen.setdefault(key, value) != value:
            return key
    return None


class Verifier:
    """Turns a request for a known call into a verified ``Call``, or raises the BBB error to answer."""

    def __init__(self, config: Config, integrations: Integrations) -> None:
        self.config = config
        self.integrations = integrations

    def verify(self, spec: CallSpec, request: Request) -> Call:
        """The signed call, its signer enabled and its routing parameters unambiguous."""
        return self.verify_signed(self.signed(spec, request))

    @staticmethod
    def verify_signed(call: Call) -> Call:
        """A signed call its signer may make: enabled, and routing parameters unambiguous."""
        if not call.integration.enabled:
            raise errors.permission_denied_access()
        if (twice := conflicting_param(call.pairs)) is not None:
            raise errors.invalid_parameter(f"{twice} is given more than once with different values")
        return call

    def signed(self, spec: CallSpec, request: Request) -> Call:
        """Check the checksum and find the integration that signed the call (bounds first)."""
        name = spec.name
        limits = self.config.limits
        content_type = request.content_type
        body: bytes | None = request.body or None
        raw_query = request.raw_query
        if len(raw_query) > limits.max_query_bytes:
            raise errors.request_too_large()
        if body is not None:
            if len(body) > limits.body_limit(spec.upload):
                raise errors.request_too_large()
            if content_type not in spec.content_types:
                raise errors.unsupported_content_type()
        form = body if body is not None and content_type == FORM else b""
        if raw_query.count("&") + form.count(b"&") + 2 > limits.max_params:
            raise errors.invalid_parameter(f"more than {limits.max_params} parameters")
        supplied = checksum.checksum_param(raw_query)
        if supplied is None and form:
            supplied = checksum.checksum_param(form)
        if not supplied:
            raise errors.ChecksumMissing()
        secrets = self.integrations.secrets
        algorithms = self.config.checksum_algorithms
        signed = checksum.strip_checksum(raw_query, supplied)
        legacy = ""
        body_signed = not signed and bool(form)
        if not body_signed:
            owner = checksum.matching_owner(name, signed, supplied, secrets, algorithms)
        else:
            # Older servers verified form POSTs over the body: as sent, or re-encoded sorted.
            stripped_body = checksum.strip_checksum(form, supplied)
            owner = checksum.matching_owner(name, stripped_body, supplied, secrets, algorithms)
            if owner is None and checksum.algorithm_for(supplied) is not None:
                # Re-encoding needs the decoded pairs: bounded by the body limit and the parameter count.
                legacy = checksum.legacy_params_query(
                    RawQuery.parse(stripped_body.decode("utf-8", "replace")).pairs())
                owner = checksum.matching_owner(name, legacy, supplied, secrets, algorithms)
                if owner is None:
                    legacy = ""
        if owner is None:
            raise errors.ChecksumMismatch()
        form_text = ""
        if form:
            try:
                form_text = form.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError("invalidParameters", "The request body is not valid UTF-8.") from None
        forward_body = body
        if body_signed:
            query = RawQuery.parse(legacy or checksum.strip_checksum(form_text, supplied))
            forward_body = None  # the body itself was signed: it travels as the query
            pairs = query.pairs()
        else:
            query = RawQuery.parse(signed)
            pairs = query.pairs()
            if form_text:
                pairs += [p for p in RawQuery.parse(form_text).pairs() if p[0] != "checksum"]
        forwarded_for = request.headers.get("x-forwarded-for", "")
        return Call(name, request.method, query, pairs, forward_body, content_type, owner, request.client_ip,
                    forwarded_for, request.headers.get("content-type", ""))
