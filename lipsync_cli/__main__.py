"""`python -m lipsync_cli ...` == `lipsync ...`."""

from lipsync_cli.main import main

main()
