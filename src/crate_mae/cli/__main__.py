"""``python -m crate_mae.cli`` is ``python -m crate_mae``, the ``crate-mae`` command (e.g. under torchrun)."""

import sys

from . import main

sys.exit(main())
