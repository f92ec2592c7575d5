"""`python -m t3s.cli` runs the command line."""

from t3s.cli.app import main

main()
