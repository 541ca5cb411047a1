"""Entry point of the packaged app: the same command line as the installed ``medview``."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from medview.cli import main

    sys.exit(main())
