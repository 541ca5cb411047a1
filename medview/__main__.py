from medview.cli import run

run()
