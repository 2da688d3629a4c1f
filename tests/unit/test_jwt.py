"""lb_core.jwt: HMAC JWTs as BBB's recording-ready callback sends them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from lb_core import jwt
from lb_core.jwt import JwtError


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pad(segment: str) -> str:
    return segment + "=" * (-len(segment) % 4)


def _segments(token: str) -> tuple[dict, dict, bytes]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(_pad(header))),
        json.loads(base64.urlsafe_b64decode(_pad(payload))),
        base64.urlsafe_b64decode(_pad(signature)),
    )


def _forge(header: dict, payload: dict, secret: str, digest=hashlib.sha256) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)],
)
def test_encode_is_a_compact_jws_with_bbb_header(algorithm: str, digest) -> None:
    payload = {"meeting_id": "room-1", "record_id": "abc-123"}
    token = jwt.encode(payload, "s3cret", algorithm)
    header_segment, payload_segment, _ = token.split(".")
    assert base64.urlsafe_b64decode(_pad(header_segment)).decode() == f'{{"typ":"JWT","alg":"{algorithm}"}}'
    assert (
        base64.urlsafe_b64decode(_pad(payload_segment)).decode()
        == '{"meeting_id":"room-1","record_id":"abc-123"}'
    )
    header, decoded_payload, signature = _segments(token)
    expected = hmac.new(b"s3cret", f"{header_segment}.{payload_segment}".encode(), digest).digest()
    assert signature == expected
    assert "=" not in token
    assert jwt.decode(token, ["s3cret"]) == payload


def test_decode_accepts_the_well_known_jwt_io_example() -> None:
    token = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
        "eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ."
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    )
    assert jwt.decode(token, ["your-256-bit-secret"]) == {
        "sub": "1234567890",
        "name": "John Doe",
        "iat": 1516239022,
    }


def test_decode_accepts_a_header_without_typ_as_ruby_jwt_sends() -> None:
    token = _forge({"alg": "HS256"}, {"meeting_id": "m", "record_id": "r"}, "key")
    assert jwt.decode(token, ["key"]) == {"meeting_id": "m", "record_id": "r"}


def test_decode_tries_every_secret_for_rotation() -> None:
    token = jwt.encode({"record_id": "r"}, "new-secret", "HS512")
    assert jwt.decode(token, ["old-secret", "new-secret"]) == {"record_id": "r"}
    assert jwt.decode(token, "new-secret") == {"record_id": "r"}  # a lone str is one secret


def test_unicode_payload_round_trips() -> None:
    payload = {"meeting_id": "Raum Ä ✓", "record_id": "x"}
    assert jwt.decode(jwt.encode(payload, "clé"), ["clé"]) == payload


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.abc",
        "e30.e30.",  # header without alg
        "eyJhbGciOiJIUzI1NiJ9.e30.a+b/",  # not base64url
        "eyJhbGciOiJIUzI1NiJ9.e30.abcde",  # impossible base64 length
        "bm90IGpzb24.e30.abc",  # header is not JSON
        "W10.e30.abc",  # header is a JSON list
        "eyJhbGciOiJIUzI1NiJ9.e30.Zm9v\u00e9",  # non-ASCII
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(JwtError):
        jwt.decode(token, ["secret"])


def test_wrong_secret_and_tampering_are_refused() -> None:
    token = jwt.encode({"meeting_id": "m", "record_id": "r"}, "right")
    with pytest.raises(JwtError, match="signature"):
        jwt.decode(token, ["wrong"])
    with pytest.raises(JwtError):
        jwt.decode(token, [])
    header, _, signature = token.split(".")
    other_payload = _b64(b'{"meeting_id":"m","record_id":"other"}')
    with pytest.raises(JwtError, match="signature"):
        jwt.decode(f"{header}.{other_payload}.{signature}", ["right"])


def test_alg_none_and_unlisted_algorithms_are_refused() -> None:
    none_header = _b64(b'{"alg":"none","typ":"JWT"}')
    unsigned = f"{none_header}.{_b64(b'{}')}."
    with pytest.raises(JwtError, match="not allowed"):
        jwt.decode(unsigned, ["secret"])
    rs256 = _forge({"alg": "RS256"}, {}, "secret")
    with pytest.raises(JwtError, match="not allowed"):
        jwt.decode(rs256, ["secret"])
    hs512 = jwt.encode({}, "secret", "HS512")
    with pytest.raises(JwtError, match="not allowed"):
        jwt.decode(hs512, ["secret"], algorithms=("HS256",))
    with pytest.raises(JwtError):
        jwt.encode({}, "secret", "none")


def test_payload_must_be_an_object() -> None:
    token = _forge({"alg": "HS256"}, ["not", "an", "object"], "secret")  # type: ignore[arg-type]
    with pytest.raises(JwtError, match="object"):
        jwt.decode(token, ["secret"])


def test_exp_and_nbf_are_honoured_when_present() -> None:
    expired = jwt.encode({"exp": int(time.time()) - 60}, "secret")
    with pytest.raises(JwtError, match="expired"):
        jwt.decode(expired, ["secret"])
    assert jwt.decode(expired, ["secret"], leeway=120)["exp"] < time.time()
    future = jwt.encode({"nbf": int(time.time()) + 60}, "secret")
    with pytest.raises(JwtError, match="not valid yet"):
        jwt.decode(future, ["secret"])
    valid = jwt.encode({"exp": int(time.time()) + 60}, "secret")
    assert "exp" in jwt.decode(valid, ["secret"])
