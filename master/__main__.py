import sys

from common.cli import main

sys.exit(main(["master", *sys.argv[1:]]))
