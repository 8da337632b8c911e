"""``python -m visionsearch_client.loadtest`` = ``visionsearch-loadtest``."""

import sys

from visionsearch_client.loadtest.cli import main

sys.exit(main())
