"""``python -m pipeline.cli`` runs the ``biopriv`` command line."""

import sys

from pipeline.cli import main

sys.exit(main())
