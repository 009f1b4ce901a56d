"""The ``medden`` command: parses arguments, calls the public API, prints. Nothing imports this package.

One module per command (``denoise``, ``info`` and ``methods``, ``simulate``, ``evaluate``, ``train``, ``serve``,
``bids``); each imports the heavy parts of medden inside its command body, so ``medden --help`` and ``medden info``
never load torch.
"""
import medden  # noqa: F401  (the package whose public functions the commands call)
# each module registers its commands
from medden.cli import denoise, info, train, simulate, evaluate, serve, bids  # noqa: F401
from medden.cli.base import app, main, run

__all__ = ["app", "main", "run"]
