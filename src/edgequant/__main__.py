"""``python -m edgequant`` runs the command line."""

from edgequant.cli.main import entry

entry()
