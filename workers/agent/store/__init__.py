"""Postgres storage of the Agent Service (schema ``agent``), one module per resource.

:class:`Store` is the one object the service passes around; its methods come from the
resource modules (``agents.py``, ``threads.py``, ``runs.py``, ``memories.py``), which
share the pool and the paging helpers of ``base.py``.
"""

from bus.context import new_id
from workers.agent.store.agents import Agents
from workers.agent.store.memories import Memories
from workers.agent.store.runs import Runs
from workers.agent.store.threads import Threads

__all__ = ["SCHEMA", "Store", "new_id", "prepare"]
from workers.agent.store.base import SCHEMA, prepare


class Store(Agents, Threads, Runs, Memories):
    """Every table of the schema, over one pool."""
