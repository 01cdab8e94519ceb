"""Speed/quality study of the bundled tiny pair: the `sweep` command (apd_ext/tiny/sweep.py holds
the grid, the run and the plot).

    python -m apd_ext sweep [--num-problems 50] [--out bench/results/sweep_tiny] [--quick] [--replot]
    python bench/sweep.py ...          (the same)
"""

import sys

from apd_ext.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
