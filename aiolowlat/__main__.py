"""``python -m aiolowlat``: the aiolowlat command."""

import sys

from .cli import main

sys.exit(main())
