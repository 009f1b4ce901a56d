"""``python -m medden`` runs the CLI."""
import sys

from medden.cli import main

sys.exit(main())
