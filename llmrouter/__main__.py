"""``python -m llmrouter``: the same as the ``llmrouter`` command."""

import sys

from .cli import main

sys.exit(main())
