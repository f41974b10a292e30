"""``python -m certgate.ca ...``: the same as ``certgate ca ...``.

Goes through :func:`certgate.cli.main`, so errors, exit codes and a closed
pipe are handled at the one boundary.
"""

from __future__ import annotations

import sys

from certgate.cli import main

if __name__ == "__main__":
    sys.exit(main(["ca", *sys.argv[1:]]))
