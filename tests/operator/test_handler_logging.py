"""What the operator logs when a queued reconcile fails: an API server that does not answer is
an expected, retried condition and gets one line; a bug keeps its traceback, and both are
retried."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import urllib3

from accel_operator import handlers


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def reconcile(self, namespace: str, name: str) -> None:
        raise self.error

    def due_in(self, namespace: str, name: str) -> float | None:
        return 2.0  # the reconciler's retry delay


def test_an_unreachable_api_server_is_one_warning_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionRefusedError("Connection refused")
    )
    with caplog.at_level(logging.INFO, logger="accel_operator"):
        handlers._reconcile_queued(Failing(refused), "team-a", "bert")  # type: ignore[arg-type]
    records: list[Any] = [r for r in caplog.records if r.name.startswith("accel_operator")]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].exc_info is None
    assert "team-a/bert: the API server did not answer" in records[0].getMessage()
    assert "Connection refused" in records[0].getMessage()


def test_a_bug_in_a_reconcile_is_logged_with_its_traceback_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="accel_operator"):
        again = handlers._reconcile_queued(Failing(KeyError("phase")), "team-a", "bert")  # type: ignore[arg-type]
    [record] = [r for r in caplog.records if r.name.startswith("accel_operator")]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "team-a/bert failed; retrying" in record.getMessage()
    assert again == 2.0
