"""``python -m fastdenoise``: the ``fastdenoise`` command line (see :mod:`fastdenoise.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
