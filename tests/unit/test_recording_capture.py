"""A recording upload's bearer token never reaches a saved capture."""

from __future__ import annotations

from addons.capture import clean


def test_an_upload_token_is_masked_in_saved_flows_even_without_password_masking() -> None:
    state = {"metadata": {}, "request": {"path": b"/bigbluebutton/lb/recordings", "content": b"",
                                         "headers": ((b"Authorization", b"Bearer eyJ.secret.sig"),
                                                     (b"Content-Type", b"application/gzip"))}}
    saved = clean(state, mask=False)
    assert saved["request"]["headers"] == ((b"Authorization", b"***"), (b"Content-Type", b"application/gzip"))
