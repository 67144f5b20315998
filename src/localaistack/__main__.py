"""``python -m localaistack`` is ``las``."""

from localaistack.cli.app import main

main()
