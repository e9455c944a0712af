import sys

from common.cli import main

sys.exit(main(["broker", *sys.argv[1:]]))
