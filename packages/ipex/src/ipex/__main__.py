import sys

from ipex.cli import main

sys.exit(main())
