"""The composition root: embedded development infrastructure, the worker registry, the CLI."""
