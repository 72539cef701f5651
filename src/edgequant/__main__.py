"""``python -m edgequant`` runs the command line."""

import sys

from edgequant.cli.main import main

sys.exit(main())
