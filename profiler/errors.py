"""What a sweep raises, and the one-line form every error it reports takes (CLI messages, `missing`)."""

from __future__ import annotations

from simulator.errors import MemtrafficError


class ProfileInterrupted(MemtrafficError):
    """Ctrl-C during a sweep; the bundle keeps the finished batch sizes (partial)."""


class ProfileFailed(MemtrafficError):
    """A sweep that broke; the bundle keeps the finished batch sizes (partial)."""


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, or `Type` alone when the message is empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
