import sys

from certgate.cli import main

sys.exit(main())
