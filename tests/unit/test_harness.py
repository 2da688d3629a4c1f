"""The test harness itself: what happens to browser tests without a browser."""

from __future__ import annotations

import pytest

from tests import conftest


def test_without_chromium_a_browser_test_is_skipped_locally(monkeypatch):
    monkeypatch.setattr(conftest, "CHROMIUM", None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require_chromium()


def test_without_chromium_a_browser_test_fails_on_ci(monkeypatch):
    monkeypatch.setattr(conftest, "CHROMIUM", None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        conftest.require_chromium()


def test_with_chromium_its_path_is_used(monkeypatch):
    monkeypatch.setattr(conftest, "CHROMIUM", "/usr/bin/chromium")
    monkeypatch.setenv("CI", "true")
    assert conftest.require_chromium() == "/usr/bin/chromium"
