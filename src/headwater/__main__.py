"""``python -m headwater`` runs the command-line interface."""

import sys

from headwater._launch import launch

launch(sys.argv[1:])  # before the CLI's imports: see headwater._launch

from headwater.cli import console  # noqa: E402

raise SystemExit(console())
