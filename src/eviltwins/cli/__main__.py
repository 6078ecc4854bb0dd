"""``python -m eviltwins.cli``: the command line."""

from eviltwins.cli import run

if __name__ == "__main__":
    run()
