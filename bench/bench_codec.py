"""Envelope codecs side by side: encode + decode of the same envelopes, same run.

Prints microseconds per round trip and bytes per envelope for msgpack (the baseline),
JSON and protobuf, for a small request (a cache get) and a larger one (a chat request with
a few messages). CPU only: no NATS.

    .venv/bin/python bench/bench_codec.py [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.codec import CODECS, Codec  # noqa: E402
from bus.context import new_context  # noqa: E402

HEADERS = new_context("acme", user="alice", roles=["admin"], timeout=30).headers()
PAYLOADS = {
    "small": {"namespace": "default", "key": "greeting"},
    "chat": {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 8},
            {"role": "user", "content": "What is the capital of France? " * 4},
            {"role": "assistant", "content": "Paris is the capital of France. " * 4},
            {"role": "user", "content": "And of Italy?"},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "metadata": {"ids": list(range(32)), "blob": b"\x00" * 256},
    },
}


def measure(name: str, payload: object, n: int) -> tuple[float, int]:
    codec = Codec(name)  # type: ignore[arg-type]
    body = codec.encode(HEADERS, payload)
    started = time.perf_counter()
    for _ in range(n):
        codec.decode(codec.encode(HEADERS, payload))
    return (time.perf_counter() - started) / n * 1e6, len(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    for label, payload in PAYLOADS.items():
        for name in CODECS:  # warm up every path once
            measure(name, payload, args.n // 10)
        base, _ = measure("msgpack", payload, args.n)
        print(f"{label} envelope (encode + decode, {args.n} times):")
        for name in CODECS:
            us, size = measure(name, payload, args.n)
            print(f"  {name:9} {us:7.2f} us  {size:5d} bytes  {us / base:5.2f}x msgpack")


if __name__ == "__main__":
    main()
