"""`python -m optimizer` is the `optimize` command."""

import sys

from optimizer.cli import main

sys.exit(main())
