"""The one error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and what would be right."""
