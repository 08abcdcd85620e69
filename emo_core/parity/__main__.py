import argparse
import sys

from . import __doc__ as doc
from . import add_arguments, main

parser = argparse.ArgumentParser(prog="python -m emo_core.parity", description=doc.splitlines()[0])
add_arguments(parser)
sys.exit(main(parser.parse_args()))
