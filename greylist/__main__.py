"""``python -m greylist``: the command line (``check`` when given only control files)."""

from .cli import main

raise SystemExit(main())
