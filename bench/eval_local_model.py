"""The local chat model on short questions with exact answers (tests/data/local_model_eval.json).

Runs the gateway's own ``LocalGenerator`` (the code behind ``local/smollm2-135m``) in this
process, with the provider's default sampling unless told otherwise, and prints each answer
and the score. A response scores when one accepted answer appears in it as whole words
(case and punctuation ignored): the questions ask for one word or number, so this is an
exact match that tolerates "The capital of France is Paris."

    .venv/bin/python bench/eval_local_model.py [--temperature T] [--top-p P] [--system TEXT]
        [--max-tokens N] [--seed S] [--repeat R] [--threads N]

CPU-bound and single-threaded per model (2 threads): about 20 x max_tokens tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.gateway.local import MODEL_THREADS, LocalGenerator  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "local_model_eval.json"


def words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def hit(response: str, answers: list[str]) -> bool:
    w = words(response)
    return any(words(a) in w for a in answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--temperature", type=float, default=None, help="default: the provider's")
    ap.add_argument("--top-p", type=float, default=None, help="default: the provider's")
    ap.add_argument("--system", default=None, help="a system message before each question")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per question (other seeds)")
    ap.add_argument(
        "--repeat-penalty", type=float, default=None, help="llama.cpp's (not an OpenAI parameter)"
    )
    ap.add_argument(
        "--threads", type=int, default=MODEL_THREADS, help="1 is faster on a busy machine"
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    questions = json.loads(DATA.read_text())["questions"]
    gen = LocalGenerator(threads=args.threads)
    if args.repeat_penalty is not None:  # what llama.cpp would do with it, for comparison
        base, penalty = gen._args, args.repeat_penalty
        gen._args = lambda m, p: {**base(m, p), "repeat_penalty": penalty}  # type: ignore[method-assign,assignment]
    params: dict[str, Any] = {"max_tokens": args.max_tokens}
    if args.temperature is not None:
        params["temperature"] = args.temperature
    if args.top_p is not None:
        params["top_p"] = args.top_p
    score = total = tokens = 0
    t0 = time.perf_counter()
    for item in questions:
        messages = [{"role": "user", "content": item["q"]}]
        if args.system is not None:
            messages.insert(0, {"role": "system", "content": args.system})
        for r in range(args.repeat):
            out = gen.chat(messages, seed=args.seed + r, **params)
            ok = hit(out["text"], item["a"])
            score += ok
            total += 1
            tokens += out["completion_tokens"]
            if not args.quiet:
                text = out["text"].replace("\n", " ")[:100]
                print(f"{'ok ' if ok else '-- '} {item['q'][:48]:<48} -> {text}")
    elapsed = time.perf_counter() - t0
    gen.llm.close()
    settings = (
        f"temperature={params.get('temperature', 'default')} "
        f"top_p={params.get('top_p', 'default')} system={'yes' if args.system else 'default'} "
        f"repeat_penalty={args.repeat_penalty or 'default'} max_tokens={args.max_tokens}"
    )
    print(
        f"score {score}/{total} ({100 * score / total:.0f}%)  {settings}  "
        f"{tokens} tokens in {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
