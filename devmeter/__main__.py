import sys

from devmeter.entry import main

sys.exit(main())
