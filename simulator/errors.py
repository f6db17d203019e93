"""User-facing errors: each carries one line that names what is wrong, and the CLI exits 2 on it."""

from __future__ import annotations


class MemtrafficError(Exception):
    """Base class of every error the CLI reports as a single line with exit code 2."""


class ConfigError(MemtrafficError):
    """A model, hardware or workload description is malformed or impossible."""


class PresetNotFoundError(ConfigError):
    """A preset name matched no file; the message lists the nearest names."""


class TraceError(MemtrafficError):
    """A trace, timeline or bundle is missing, truncated, foreign or of the wrong version."""


class MeasurementUnavailable(MemtrafficError):
    """A measurement source (GPU, NVML, GPM, ncu) is not present on this machine."""
