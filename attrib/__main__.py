"""``python -m attrib``: the ``attrib`` command."""

from attrib.cli import main

raise SystemExit(main())
