"""``python -m karras_jax``: the same as the ``karras-jax`` command."""

import sys

from karras_jax.cli import main

sys.exit(main())
