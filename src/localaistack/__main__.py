"""``python -m localaistack`` is ``las``."""

from localaistack.cli.entry import main

main()
