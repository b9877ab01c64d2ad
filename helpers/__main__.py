"""`python -m helpers ...`: the command line (helpers.run.cli)."""
import sys

from helpers.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
