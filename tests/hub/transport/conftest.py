"""Fixtures for the transport tests."""

from tests.support.transport_server import fanout_hub

__all__ = ["fanout_hub"]
