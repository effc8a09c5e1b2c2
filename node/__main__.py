"""``python -m node``: the same command line as ``medledger``."""

from node.cli import main

if __name__ == "__main__":
    main()
