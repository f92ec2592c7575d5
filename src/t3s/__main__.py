"""`python -m t3s` runs the command line."""

from t3s.cli import main

main()
