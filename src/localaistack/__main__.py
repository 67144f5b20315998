"""``python -m localaistack`` is ``las``."""

from localaistack.cli.main import main

main()
