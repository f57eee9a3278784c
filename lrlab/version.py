"""lrlab's version: one place, read by the package, by results.json's header and by the build."""

__version__ = "0.2.0"
