"""The unit tier: no network at all."""

from __future__ import annotations

import urllib3  # noqa: F401 - imported before sockets are disabled: it probes IPv6 support at import
from pytest_socket import disable_socket


def pytest_runtest_setup() -> None:
    disable_socket(allow_unix_socket=False)
