"""Fixtures of the agent tests: a module's own agent worker with scripted services
(tests/agent_env.py)."""

from tests.agent_env import agent_worker, api, fake, fake_services, tenant, web  # noqa: F401
