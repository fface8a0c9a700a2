"""Prompt Generator walk-through against a running ``mesh up``, over HTTP through the bridge.

"An agent that answers questions about our HR policy documents", end to end:

1. alice (``promptgen:author``) creates the RAG collection "HR policy documents" and
   indexes three short HR policy texts into it;
2. alice asks ``POST /api/v1/promptgen/agents`` for the agent: the draft must be
   schema-valid, attached to that collection with ``rag_search``, and pass its checks;
3. alice submits it, bob (``promptgen:reviewer``, another user) approves it, carol
   (``promptgen:publisher``) publishes it: the Agent Service creates the agent as carol;
4. carol runs the agent with a question: the generated agent has ``retrieval.mode:
   "auto"``, so the run searches the collection first and its ``citations`` must name a
   policy document (if they do not, the RAG Service's own ``rag.query`` on the same
   collection is shown for comparison);
5. the audit trail of the spec is printed.

Tokens come from ``mesh token`` (so run it with the same ``MESH_DATA_DIR`` as the
``mesh up`` it talks to). Every step prints what it sent and the key fields of the
answer, and every timing is printed with the load average beside it. Exit status: 0 when
steps 1–3 succeeded and the run succeeded with citations naming a policy document (and,
with ``--require-answer``, its output text refers to one: ``[n]``, a document or source
id); 1 otherwise. One run takes ~1–3 min with the local model.

    MESH_DATA_DIR=/tmp/pgwalk BRIDGE_PORT=18480 .venv/bin/mesh up &
    MESH_DATA_DIR=/tmp/pgwalk .venv/bin/python bench/walkthrough_promptgen.py \\
        --url http://127.0.0.1:18480
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "an agent that answers questions about our HR policy documents"
QUESTION = "How many vacation days do I get per year?"
#: Short HR policy texts, each a document of the collection (source_id = citation).
POLICIES = [
    {
        "source_id": "hr-vacation-policy",
        "title": "Vacation policy",
        "text": "Vacation policy. Every full-time employee gets 25 paid vacation days per "
        "calendar year. Part-time employees get vacation days in proportion to their "
        "working days. Up to 5 unused vacation days may be carried over to the next year "
        "and must be taken by March 31. Vacation is requested in the HR portal at least "
        "two weeks in advance and approved by the line manager.",
    },
    {
        "source_id": "hr-parental-leave",
        "title": "Parental leave policy",
        "text": "Parental leave policy. Parents get 16 weeks of paid parental leave after "
        "the birth or adoption of a child, to be taken within the first year. Tell HR at "
        "least eight weeks before the leave starts.",
    },
    {
        "source_id": "hr-remote-work",
        "title": "Remote work policy",
        "text": "Remote work policy. Employees may work remotely up to three days a week "
        "after their probation period, with their manager's agreement. Company laptops "
        "must be used with the VPN outside the office.",
    },
]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def load() -> str:
    """The load average, printed beside every timing (the machine may be shared)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def token(tenant: str, user: str, roles: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh",
            "token",
            "--tenant",
            tenant,
            "--user",
            user,
            "--roles",
            roles,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return out.stdout.strip()


class Api:
    def __init__(self, client: httpx.Client, tok: str, user: str) -> None:
        self.client, self.user = client, user
        self.headers = {"Authorization": f"Bearer {tok}"}

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = 60.0
    ) -> tuple[int, Any]:
        headers = {**self.headers, "X-Request-Timeout": str(int(timeout))}
        r = self.client.request(method, path, json=body, headers=headers, timeout=timeout + 10)
        try:
            data = r.json()
        except ValueError:
            data = r.text
        say(f"{self.user}: {method} {path} -> {r.status_code}")
        return r.status_code, data

    def ok(self, method: str, path: str, body: Any = None, *, timeout: float = 60.0) -> Any:
        status, data = self.call(method, path, body, timeout=timeout)
        if status >= 300:
            raise SystemExit(f"FAILED: {method} {path}: {status} {json.dumps(data)[:2000]}")
        return data


def cited(output: str, steps: list[dict[str, Any]]) -> list[str]:
    """The policy documents the answer names (source id or title)."""
    text = (output or "").lower()
    return [
        p["source_id"]
        for p in POLICIES
        if p["source_id"] in text or str(p["title"]).lower() in text
    ]


def policy_citations(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's citations that name one of the policy documents."""
    ids = {p["source_id"] for p in POLICIES}
    return [c for c in run.get("citations") or [] if c.get("source_id") in ids]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the bridge")
    p.add_argument("--tenant", default=f"walk-{uuid.uuid4().hex[:6]}")
    p.add_argument("--model", default=None, help="the alias that writes the spec")
    p.add_argument("--timeout", type=float, default=300.0, help="per generation / run")
    p.add_argument(
        "--require-answer",
        action="store_true",
        help="also fail when the output text does not refer to a cited document",
    )
    args = p.parse_args()

    started = time.monotonic()
    say(f"bridge {args.url}, tenant {args.tenant}")
    with httpx.Client(base_url=f"{args.url}/api/v1") as client:
        alice = Api(client, token(args.tenant, "alice", "promptgen:author"), "alice")
        bob = Api(client, token(args.tenant, "bob", "promptgen:reviewer"), "bob")
        carol = Api(client, token(args.tenant, "carol", "promptgen:publisher"), "carol")

        # 1. the existing collection, with documents
        col = alice.ok("POST", "/rag/collections", {"name": "HR policy documents"})
        cid = col["collection_id"]
        say(f"  collection {cid} ({col['name']}, {col.get('embedding_model')})")
        ing = alice.ok(
            "POST",
            f"/rag/collections/{cid}/documents",
            {"collection_id": cid, "documents": POLICIES},
            timeout=120,
        )
        say(f"  indexed: {[(d['source_id'], d['chunks']) for d in ing['documents']]}")

        # 2. the draft
        body: dict[str, Any] = {"prompt": PROMPT}
        if args.model:
            body["model"] = args.model
        t = time.monotonic()
        v = alice.ok("POST", "/promptgen/agents", body, timeout=args.timeout)
        say(
            f"  generated in {time.monotonic() - t:.1f} s ({load()}): "
            f"spec {v['spec_id']} v{v['version']}"
        )
        spec = v["spec"]
        gen = v["generation"]
        say(
            f"  model {gen['model']} mode {gen['mode']} attempts {gen['attempts']} "
            f"valid_first_try {gen['valid_first_try']}"
        )
        for n in gen["notes"]:
            say(f"  note: {n}")
        say(f"  name: {spec['name']!r}")
        say(f"  system_prompt: {spec['system_prompt']!r}")
        say(f"  tools: {spec['tools']}  rag_collections: {spec['rag_collections']}")
        say(f"  approval_required: {spec['approval_required']}  limits: {spec['limits']}")
        say(f"  retrieval: {spec.get('retrieval')}")
        for c in v["checks"]:
            say(f"  check {c['name']}: {'ok' if c['ok'] else 'FAILED'} — {c['message']}")
        attached = cid in spec["rag_collections"] and "rag_search" in spec["tools"]
        say(f"  attached to {cid} with rag_search: {attached}; checks_passed: {v['checks_passed']}")
        if not (attached and v["checks_passed"]):
            say("FAILED: the draft is not attached to the collection or its checks failed")
            return 1

        # 3. submit → approve (another user) → publish
        sid, ver = v["spec_id"], v["version"]
        base = f"/promptgen/specs/{sid}/versions/{ver}"
        s = alice.ok("POST", f"{base}/submit", {"spec_id": sid, "version": ver})
        say(f"  status {s['status']}")
        own = alice.call(
            "POST", f"{base}/review", {"spec_id": sid, "version": ver, "decision": "approve"}
        )
        code = own[1].get("code") if isinstance(own[1], dict) else ""
        say(f"  alice (author, not a reviewer) approving it: {own[0]} {code}")
        r = bob.ok(
            "POST", f"{base}/review", {"spec_id": sid, "version": ver, "decision": "approve"}
        )
        say(f"  status {r['status']}")
        pub = carol.ok("POST", f"{base}/publish", {"spec_id": sid, "version": ver})
        agent_id = pub["agent_id"]
        say(f"  status {pub['status']}, agent {agent_id}")
        agent = carol.ok("GET", f"/agents/{agent_id}")
        say(
            f"  agent created_by {agent['created_by']}, tools {agent['tools']}, "
            f"rag_collections {agent['rag_collections']}, retrieval {agent.get('retrieval')}"
        )

        # 4. the agent runs
        t = time.monotonic()
        status, run = carol.call(
            "POST", f"/agents/{agent_id}/runs", {"task": QUESTION}, timeout=args.timeout
        )
        say(f"  run in {time.monotonic() - t:.1f} s ({load()}): HTTP {status}")
        answered = in_text = False
        if isinstance(run, dict) and "status" in run:
            say(f"  run {run.get('run_id')} status {run['status']} error {run.get('error')}")
            for st in run.get("steps") or []:
                kind = st.get("kind") or st.get("type")
                say(f"  step {st.get('index')} {kind}: {json.dumps(st)[:300]}")
            say(f"  output: {run.get('output')!r}")
            for c in run.get("citations") or []:
                say(
                    f"  citation [{c['index']}] {c.get('source_id')} ({c.get('title')}) "
                    f"document {c['document_id']} collection {c.get('collection_id')} "
                    f"chunk {c['chunk_id']} score {c.get('score')} step {c['step']} "
                    f"cited in the output: {c['cited']}"
                )
                say(f"      quote: {c['quote'][:160]!r}")
            found = policy_citations(run)
            answered = run["status"] == "succeeded" and bool(found)
            in_text = any(c["cited"] for c in found)
            names = cited(run.get("output") or "", run.get("steps") or [])
            say(
                f"  citations naming a policy document: {[c['source_id'] for c in found] or 'none'}"
            )
            say(f"  the output refers to one ([n], id or title): {in_text or names or 'no'}")
            in_text = in_text or bool(names)
        else:
            say(f"  run refused: {json.dumps(run)[:1000]}")

        if not answered:
            # For comparison: the RAG Service answers the same question from the same
            # collection with the same model, retrieving first (no tool call needed).
            status, q = carol.call(
                "POST",
                "/rag/query",
                {"collection_ids": [cid], "question": QUESTION, "top_k": 3},
                timeout=min(args.timeout, 120.0),
            )
            if status >= 300:
                say(f"  rag.query: {status} {json.dumps(q)[:300]}")
            elif isinstance(q, dict) and "answer" in q:
                say(f"  rag.query answer: {q['answer']!r}")
                say(f"  rag.query citations: {[c['source_id'] for c in q['citations']]}")

        # 5. audit
        trail = carol.ok("GET", f"/promptgen/audit?spec_id={sid}")
        for a in reversed(trail["items"]):
            say(
                f"  audit: {a['action']} v{a['version']} {a['from_status']} -> "
                f"{a['to_status']} by {a['actor']}"
            )
    say(
        f"done in {time.monotonic() - started:.0f} s ({load()}); "
        f"answered with citations: {answered}; the output refers to one: {in_text}"
    )
    if not answered:
        say("FAILED: the run has no citation of a policy document")
        return 1
    return 1 if args.require_answer and not in_text else 0


if __name__ == "__main__":
    sys.exit(main())
