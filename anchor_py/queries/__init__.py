"""Every SQL statement anchor-py sends, by name, grouped by who sends it.

Callers use the names from here (``queries.CLAIM``); each group lives in its own module.
"""

from anchor_py.queries.admin import *  # noqa: F403
from anchor_py.queries.cron import *  # noqa: F403
from anchor_py.queries.enqueue import *  # noqa: F403
from anchor_py.queries.install import *  # noqa: F403
from anchor_py.queries.retention import *  # noqa: F403
from anchor_py.queries.worker import *  # noqa: F403
