#!/usr/bin/env python
"""The example Django project's manage.py: ``python examples/django_project/manage.py anchor_worker``."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # the checkout's root, so that `examples.` imports resolve when run from anywhere
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
