import sys

from sid_edge.cli import main

sys.exit(main())
