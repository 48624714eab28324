"""``python -m headwater`` runs the command-line interface."""

from headwater.cli import console

raise SystemExit(console())
