import sys

from vkt.cli.main import main

sys.exit(main())
