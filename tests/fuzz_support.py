"""Shared by the fuzz tests: deterministic hypothesis settings, and a no-network guard (olmokit must
reject bad input before any download).

Offline mode is switched on (``HF_HUB_OFFLINE`` and huggingface_hub's cached constant) and every socket
connection or DNS lookup is *recorded and refused*. Recording matters: an HTTP client would wrap the
refusal into its own error, which olmokit might turn into a tidy message, hiding the attempt; tests
assert :attr:`NetworkGuard.attempts` is empty instead.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings


@dataclass
class NetworkGuard:
    attempts: list[str] = field(default_factory=list)

    def refuse(self, what: str):
        def blocked(*args, **kwargs):
            self.attempts.append(f"{what}{args[1:2] or args[:1]}")
            raise OSError(f"network access during a test: {what}")

        return blocked


def forbid_network(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    import huggingface_hub.constants

    guard = NetworkGuard()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", guard.refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", guard.refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", guard.refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", guard.refuse("getaddrinfo"))
    return guard


def fuzz(max_examples: int) -> settings:
    """Deterministic (CI-stable) runs; every input must be answered within a second."""
    return settings(
        max_examples=max_examples,
        deadline=1000,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
