"""``python -m nodes.cli``: the ``psi`` command without the installed script."""

import sys

from nodes.cli import main

sys.exit(main())
