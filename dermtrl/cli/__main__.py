"""``python -m dermtrl.cli``: the same as the ``dermtrl`` command."""

from dermtrl.cli.dispatch import main

raise SystemExit(main())
