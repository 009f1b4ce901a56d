"""The package version, in a leaf module every other module may import (``medden.__version__`` re-exports it)."""
__version__ = "0.3.0"
