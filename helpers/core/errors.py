"""The errors a user sees for bad input: each message names the parameter, file or column."""
from __future__ import annotations


class ConfigError(ValueError):
    """A parameter value or name that can't be used; the message names the parameter."""


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""
