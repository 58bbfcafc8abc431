import sys

from guard.tools.cli import main

sys.exit(main())
