"""``python -m mailstream``: the same as the ``mailstream`` command."""

import sys

from mailstream.cli.main import main

sys.exit(main())
