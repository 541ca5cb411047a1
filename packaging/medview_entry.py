"""Entry point of the packaged app: the same command line as the installed ``medview``."""

import multiprocessing

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from medview.cli import run

    run()  # exits; headless predict/explain/info/models without the slow teardown
