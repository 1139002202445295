"""The project's own exceptions; a leaf module that imports nothing of ours."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config that cannot be built; the message starts with the file and the key's path."""
