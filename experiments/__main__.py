"""`python -m experiments`: run the experiments and write report.md."""

from experiments.run_all import main

main()
