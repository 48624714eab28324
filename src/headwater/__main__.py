"""``python -m headwater`` runs the command-line interface."""

from headwater.cli import main

raise SystemExit(main())
