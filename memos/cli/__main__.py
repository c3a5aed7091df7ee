"""``python -m memos.cli``: the ``memos`` command."""

from memos.cli import main

raise SystemExit(main())
