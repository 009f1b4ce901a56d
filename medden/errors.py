"""Errors medden raises on bad input.

Every error a user can cause derives from :class:`MeddenError`; the CLI prints its message as one line and exits
non-zero, so messages must name the problem and the offending path or value.
"""


class MeddenError(Exception):
    """Base class of every user-facing medden error."""


class InputError(MeddenError, ValueError):
    """An input file, folder or array cannot be used (unreadable, wrong dimensionality, non-finite voxels, ...)."""


class OutputError(MeddenError, OSError):
    """An output cannot be written (exists, equals the input, folder not writable, ...)."""


class ParameterError(MeddenError, ValueError):
    """An unknown method, an unknown parameter or a parameter value out of range."""


class ModelError(MeddenError, ValueError):
    """A model file cannot be used: missing, corrupt, or holding another architecture's weights."""


class MissingDependencyError(MeddenError, ImportError):
    """An optional dependency (an extra) is needed for the requested feature."""
