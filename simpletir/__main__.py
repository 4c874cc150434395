"""``python -m simpletir ...``: the same as the ``simpletir`` command."""

from simpletir.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
