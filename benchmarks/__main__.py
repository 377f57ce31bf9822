"""`python -m benchmarks`: the headline set (benchmarks/run.py)."""

import sys

from benchmarks.run import main

sys.exit(main())
