"""``python -m webhook.wait``: the wait under its name before the rename (sortie_egress.wait)."""

from __future__ import annotations

import sys

from sortie_egress.wait import main

if __name__ == "__main__":
    sys.exit(main())
