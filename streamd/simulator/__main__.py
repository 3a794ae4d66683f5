import sys

from streamd.simulator.cli import main

sys.exit(main(sys.argv[1:]))
