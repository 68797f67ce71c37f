"""The package version, defined here only.

pyproject.toml reads it (`[tool.setuptools.dynamic]`), so the wheel's metadata, `calib --version`
and the gateway's OpenAPI document all say the same. Importing this module needs nothing beyond
the standard library: the client-only install (no `server` extra) uses it too.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
