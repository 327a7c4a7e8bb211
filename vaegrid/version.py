"""vaegrid's version: the one place (pyproject.toml reads it; provenance records it)."""

__version__ = "0.1.0"
