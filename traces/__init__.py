"""The trace bundle: versioned on-disk format, kineto/NVML importer, kernel-to-layer attribution."""

from traces.bundle import BUNDLE_VERSION, Bundle, read_bundle, write_bundle
from traces.importer import import_traces

__all__ = ["BUNDLE_VERSION", "Bundle", "import_traces", "read_bundle", "write_bundle"]
