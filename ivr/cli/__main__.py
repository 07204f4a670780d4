"""``python -m ivr.cli``: the ``ivr`` command without its installed script."""

import sys

from . import main

sys.exit(main())
