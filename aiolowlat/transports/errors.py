"""Errors of the transport registry."""


class TransportUnavailableError(RuntimeError):
    """The transport asked for cannot run here; the message says why and what to use."""
