"""python -m apd_ext: the command line (apd_ext/cli: one module per command)."""

from apd_ext.cli import main

if __name__ == "__main__":
    main()
