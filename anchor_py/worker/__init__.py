"""The worker: claims tasks, runs the user's executor, reports outcomes, runs onFailed hooks.

``Worker`` (core.py) wires the parts; each module owns one part's state (see core.py's docstring).
"""

from anchor_py.worker.config import WorkerConfig, default_services
from anchor_py.worker.core import Worker
from anchor_py.worker.startup import DatabaseSetupError
from anchor_py.worker.usercode import AbandonedThreadsError

__all__ = ["AbandonedThreadsError", "DatabaseSetupError", "Worker", "WorkerConfig", "default_services"]
