"""Statelessness: agent worker processes take turns on one chat thread, same result.

Each message is served by a different ``mesh worker agent`` process (the one before has
stopped), so nothing but Postgres can carry the thread from one message to the next.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from bus.settings import Settings
from tests.agent_env import AGENT_ENV, Api
from tests.fake_llm import answer, call

START_TIMEOUT_S = 60.0


class WorkerProcess:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            "NATS_URL": self.settings.nats_url or "",
            "DATABASE_URL": self.settings.database_url or "",
            "REDIS_URL": self.settings.redis_url or "",
            "SERVICE_NAME": "agent",
            **AGENT_ENV,
        }
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mesh", "worker", "agent", env=env, stdout=out, stderr=out
            )
        loop = asyncio.get_running_loop()
        end = loop.time() + START_TIMEOUT_S
        while "serving" not in self.log.read_text():
            assert self.proc.returncode is None, self.log.read_text()[-2000:]
            assert loop.time() < end, "agent worker did not start"
            await asyncio.sleep(0.1)
        return self

    async def stop(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 30)
        assert self.proc.returncode == 0, self.log.read_text()[-2000:]


SCRIPT = [
    [answer("Nice to meet you, Alice.")],
    [call("calculator", {"expression": "19*3"}), answer("19*3 is 57.")],
    [answer("You are Alice and you asked about 19*3.")],
]
MESSAGES = ["Hi, I am Alice.", "What is 19*3?", "Summarise our chat."]


async def _conversation(api: Api, fake, agent_id: str, before_each) -> tuple[list, list]:
    """Send MESSAGES in one thread; return the replies and what the model saw each turn."""
    thread_id, replies = None, []
    for i, (message, turns) in enumerate(zip(MESSAGES, SCRIPT, strict=True)):
        await before_each(i)
        fake.play(*turns)
        body = {"agent_id": agent_id, "message": message}
        if thread_id:
            body["thread_id"] = thread_id
        out = await api("chat", body, timeout=30)
        assert out["status"] == "succeeded", out
        thread_id = out["thread_id"]
        replies.append(out["reply"])
    seen = [[(m.role, m.content) for m in r.messages[1:]] for r in fake.requests]
    thread = await api("get_thread", {"thread_id": thread_id})
    stored = [(m["role"], m["content"]) for m in thread["messages"]]
    return replies, [seen, stored]


async def test_two_worker_processes_serve_one_thread_alternately_with_the_same_result(
    settings: Settings, api: Api, fake, tmp_path: Path
):
    first = await WorkerProcess(settings, tmp_path / "a.log").start()
    second = WorkerProcess(settings, tmp_path / "b.log")
    third = WorkerProcess(settings, tmp_path / "c.log")
    try:
        agent = await api.agent(tools=["calculator"])

        async def take_turns(i: int) -> None:
            # Message 0 on the first process, 1 on the second, 2 on a fresh first again.
            if i == 1:
                await second.start()
                await first.stop()
            if i == 2:
                await third.start()
                await second.stop()

        alternating = await _conversation(api, fake, agent["agent_id"], take_turns)

        fake.reset()

        async def stay(i: int) -> None:
            return None

        single = await _conversation(api, fake, agent["agent_id"], stay)
    finally:
        for process in (first, second, third):
            if process.proc is not None:
                await process.stop()
    assert alternating == single
    replies, (seen, stored) = alternating
    assert replies == [
        "Nice to meet you, Alice.",
        "19*3 is 57.",
        "You are Alice and you asked about 19*3.",
    ]
    assert stored == [
        ("user", MESSAGES[0]),
        ("assistant", replies[0]),
        ("user", MESSAGES[1]),
        ("assistant", replies[1]),
        ("user", MESSAGES[2]),
        ("assistant", replies[2]),
    ]
    # The third process, which never saw the thread, sent the model the whole history.
    assert seen[-1] == stored[:-1]
    for log in ("a.log", "b.log", "c.log"):
        assert "run_finished" in (tmp_path / log).read_text()
