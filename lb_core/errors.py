"""BBB API errors: each is a FAILED XML answer with a messageKey and a message.

Texts follow bbb-web, Scalelite (for LB-only conditions) and the Mconf-LB document.
"""

from __future__ import annotations

from lb_core import bbbxml


class ApiError(Exception):
    """An error that is itself the BBB answer to send."""

    def __init__(self, message_key: str, message: str, status: int = 200) -> None:
        super().__init__(f"{message_key}: {message}")
        self.message_key = message_key
        self.message = message
        self.status = status

    def to_xml(self) -> bytes:
        return bbbxml.failed(self.message_key, self.message)


class ChecksumError(ApiError):
    """The call is not signed by any integration; ``verdict`` is what the trace records."""

    verdict = "mismatch"


class ChecksumMissing(ChecksumError):
    verdict = "missing"

    def __init__(self) -> None:
        super().__init__("checksumError", "You must provide the checksum")


class ChecksumMismatch(ChecksumError):
    verdict = "mismatch"

    def __init__(self) -> None:
        super().__init__("checksumError", "Checksums do not match")


def checksum_missing() -> ApiError:
    return ChecksumMissing()


def checksum_mismatch() -> ApiError:
    return ChecksumMismatch()


def unsupported_request() -> ApiError:
    return ApiError("unsupportedRequest", "This request is not supported.")


def unsupported_content_type() -> ApiError:
    return ApiError("unsupportedContentType", "POST request Content-Type is missing or unsupported")


def missing_meeting_id() -> ApiError:
    return ApiError("missingParamMeetingID", "You must specify a meeting ID for the meeting.")


def missing_param(name: str) -> ApiError:
    return ApiError("missingParameter", f"You must specify the parameter {name}.")


def invalid_meeting_id() -> ApiError:
    return ApiError("validationError", "Invalid meeting ID")


def not_found() -> ApiError:
    return ApiError("notFound", "We could not find a meeting with that meeting ID")


def recording_not_found() -> ApiError:
    return ApiError("notFound", "We could not find recordings")


def invalid_parameters() -> ApiError:
    return ApiError("invalidParameters", "The URL you supplied has parameters that are not accepted.")


def invalid_parameter(detail: str) -> ApiError:
    return ApiError("invalidParameters", f"The URL you supplied has parameters that are not accepted: {detail}")


def permission_denied_access() -> ApiError:
    return ApiError("permissionDenied", "This application is not currently allowed to access this API.")


def permission_denied_record() -> ApiError:
    return ApiError("permissionDenied", "This application is not allowed to record meetings.")


def permission_denied_meetings() -> ApiError:
    return ApiError("permissionDenied", "This application is not allowed to have any more concurrent meetings.")


def permission_denied_participants() -> ApiError:
    return ApiError("permissionDenied", "This application is not allowed to have any more participants.")


def server_unavailable() -> ApiError:
    return ApiError("serverUnavailable", "The server that hosts this meeting is not available right now.")


def no_server_available() -> ApiError:
    return ApiError("serverUnavailable", "No BigBlueButton server is available to host a new meeting.")


def backend_timeout() -> ApiError:
    return ApiError("serverTimeout", "The BigBlueButton server did not answer in time.")


def backend_error(detail: str = "The BigBlueButton server sent an answer that could not be read.") -> ApiError:
    return ApiError("internalError", detail)


def request_too_large() -> ApiError:
    return ApiError("requestTooLarge", "The request is larger than this server accepts.")


def internal_error() -> ApiError:
    return ApiError("internalError", "An internal error occurred while handling this request.")


def store_unavailable() -> ApiError:
    """The store did not answer in time (Redis down or slow) or could not write: what the call changes was not recorded."""
    return ApiError("internalError", "The load balancer's state store is not available right now; try again shortly.")
