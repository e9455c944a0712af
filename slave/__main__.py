import sys

from common.cli import main

sys.exit(main(["slave", *sys.argv[1:]]))
