"""``python -m mimfast``: the ``mimfast`` command (see :mod:`mimfast.cli`)."""

import sys

from .cli import main

sys.exit(main())
