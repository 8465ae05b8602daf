#!/usr/bin/env python
"""Django's command-line utility for the sandbox: ``python sandbox/manage.py <command>``."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The repository root, so ``sandbox`` and ``wagtail_paid_delivery`` import without installing.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
