import sys

from devmeter.cli import main

sys.exit(main())
