"""The extender's command line: the leader-election flags and the URL standbys forward to."""

from __future__ import annotations

import socket

import pytest

from scheduler.extender.cli import advertised_url, main


@pytest.mark.parametrize(
    ("address", "port", "url"),
    [
        ("10.1.2.3", 8888, "http://10.1.2.3:8888"),  # POD_IP
        ("fd00::1", 8888, "http://[fd00::1]:8888"),  # an IPv6 pod IP needs brackets
        ("127.0.0.1", 9000, "http://127.0.0.1:9000"),
        ("0.0.0.0", 8888, f"http://{socket.gethostname()}:8888"),  # listening everywhere: the host name
        ("", 8888, f"http://{socket.gethostname()}:8888"),
    ],
)
def test_advertised_url(address: str, port: int, url: str) -> None:
    assert advertised_url(address, port) == url


@pytest.mark.parametrize(
    "timing",
    [
        ["--leader-elect-renew-deadline=20"],  # renewDeadline 20 >= leaseDuration 15
        ["--leader-elect-retry-period=10"],  # retryPeriod 10 >= renewDeadline 10
    ],
)
def test_leader_election_timing_that_breaks_the_handover_stops_start_up(
    timing: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before any cluster is contacted: no kubeconfig is needed to see the error.
    assert main(["--leader-elect", *timing]) == 2
    assert "retryPeriod < renewDeadline < leaseDuration" in capsys.readouterr().err
