"""``python -m headwater`` runs the command-line interface."""

import sys

from headwater._launch import start_early_parse

start_early_parse(sys.argv[1:])  # before the CLI's imports: see headwater.columnar.early

from headwater.cli import console  # noqa: E402

raise SystemExit(console())
