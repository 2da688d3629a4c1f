"""The recording upload throttle: all uploads together are read at recordings.upload_rate_limit bytes/s."""

from __future__ import annotations

import pytest

from addons.limits import UPLOAD_BURST_S, UploadThrottle
from lb_core.config_sections import RecordingsConfig


def test_no_limit_never_pauses() -> None:
    throttle = UploadThrottle(0)
    assert all(throttle.delay(1 << 20, 0.0) == 0.0 for _ in range(1000))


def test_a_burst_is_read_then_the_connection_rests_until_its_bytes_are_paid_for() -> None:
    throttle = UploadThrottle(1_000_000)  # 1 MB/s
    chunk = 10_000  # 10 ms worth
    waits = [throttle.delay(chunk, 0.0) for _ in range(10)]
    assert waits[:int(UPLOAD_BURST_S * 100)] == [0.0] * int(UPLOAD_BURST_S * 100)
    assert waits[-1] == pytest.approx(0.1)  # 100 kB read at once: rest until 0.1 s
    assert throttle.delay(chunk, 0.5) == 0.0  # idle time is not saved up beyond the burst


def test_uploads_share_one_rate() -> None:
    throttle = UploadThrottle(1_000_000)
    first = throttle.delay(100_000, 0.0)
    second = throttle.delay(100_000, 0.0)  # another connection, same instant
    assert first == pytest.approx(0.1) and second == pytest.approx(0.2)


def test_the_default_rate_is_bounded_and_zero_switches_it_off() -> None:
    assert RecordingsConfig().upload_rate_limit == 64 * 1024 * 1024
    assert RecordingsConfig(upload_rate_limit=0).upload_rate_limit == 0
