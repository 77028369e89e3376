"""``python -m cloud.cli``: the ``edgewatch`` command."""

import sys

from cloud.cli import main

sys.exit(main())
