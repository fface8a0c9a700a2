"""Rendering over NATS: variables, the sandbox-escape table, limits, includes, the cache."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from bus.errors import InvalidRequest, NotFound, PayloadTooLarge
from tests.prompt_support import Caller, prompt_service

CANARY = Path(f"/tmp/prompt-sandbox-canary-{uuid.uuid4().hex}")


@pytest.fixture(scope="module")
async def service(env):
    async with prompt_service(env) as handlers:
        yield handlers


@pytest.fixture
def call(service, client) -> Caller:
    return Caller(client, f"t-{uuid.uuid4().hex[:10]}")


async def create_text(call: Caller, name: str, template: str, **kw):
    return await call("create", {"name": name, "type": "text", "template": template, **kw})


async def render(call: Caller, name: str, **kw):
    return await call("render", {"name": name, **kw})


async def test_render_fills_variables_and_reports_the_version(call):
    await create_text(call, "hello", "Hello {{ user.name }}, you have {{ items|length }} items.")
    out = await render(call, "hello", variables={"user": {"name": "Ann"}, "items": [1, 2, 3]})
    assert out["text"] == "Hello Ann, you have 3 items." and out["version"] == 1


async def test_render_by_version_or_label(call):
    await create_text(call, "sel", "one", config={"model": "m1"})
    await call(
        "update",
        {
            "name": "sel",
            "base_version": 1,
            "template": "two",
            "labels": ["staging"],
            "config": {"model": "m2"},
        },
    )
    assert (await render(call, "sel"))["text"] == "one"
    staged = await render(call, "sel", label="staging")
    assert (staged["text"], staged["version"], staged["config"]) == ("two", 2, {"model": "m2"})
    assert (await render(call, "sel", version=1))["text"] == "one"
    with pytest.raises(NotFound):
        await render(call, "sel", version=9)
    with pytest.raises(NotFound):
        await render(call, "nope")


async def test_missing_variable_is_reported_by_name(call):
    await create_text(call, "names", "Dear {{ first }} {{ last }},")
    with pytest.raises(InvalidRequest) as info:
        await render(call, "names", variables={"first": "Ann"})
    assert "'last'" in info.value.message
    assert info.value.details["missing"] == ["last"]


async def test_missing_variable_in_a_chat_message_names_the_message(call):
    messages = [
        {"role": "system", "content": "Be {{ tone }}."},
        {"role": "user", "content": "{{ question }}"},
    ]
    await call("create", {"name": "chatvars", "type": "chat", "messages": messages})
    with pytest.raises(InvalidRequest) as info:
        await render(call, "chatvars", variables={"tone": "brief"})
    assert info.value.details == {"message": 1, "missing": ["question"]}


async def test_optional_variables_can_be_tested_with_is_defined(call):
    await create_text(call, "opt", "Hi{% if name is defined %} {{ name }}{% endif %}!")
    assert (await render(call, "opt"))["text"] == "Hi!"
    assert (await render(call, "opt", variables={"name": "Bo"}))["text"] == "Hi Bo!"


SHELL = f"touch {CANARY}"
ESCAPES = {
    "__class__": ("{{ ''.__class__ }}", {}),
    "__mro__": ("{{ ''.__class__.__mro__ }}", {}),
    "__subclasses__": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}),
    "int_subclasses": ("{{ (1).__class__.__base__.__subclasses__() }}", {}),
    "__globals__": ("{% macro f() %}{% endmacro %}{{ f.__globals__ }}", {}),
    "__builtins__": ("{{ __builtins__['open']('/etc/passwd').read() }}", {}),
    "cycler.__init__.__globals__": (
        f"{{{{ cycler.__init__.__globals__.os.system('{SHELL}') }}}}",
        {},
    ),
    "joiner.__init__.__globals__": (
        f"{{{{ joiner.__init__.__globals__.os.popen('{SHELL}').read() }}}}",
        {},
    ),
    "namespace.__init__.__globals__": ("{{ namespace.__init__.__globals__ }}", {}),
    "self._TemplateReference__context": (
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
        {},
    ),
    "lipsum.__globals__": (f"{{{{ lipsum.__globals__['os'].popen('{SHELL}').read() }}}}", {}),
    "config": ("{{ config.items() }}", {}),
    "request": ("{{ request.application.__globals__.__builtins__ }}", {}),
    "variable.__class__": ("{{ x.__class__.__mro__ }}", {"x": {"a": 1}}),
    "attr_filter": ("{{ ''|attr('__class__') }}", {}),
    "map_attribute": ("{{ xs|map(attribute='__class__')|join }}", {"xs": [1]}),
    "loop.__class__": (
        "{% for i in [1] %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
        {},
    ),
    "format_attribute_access": ("{{ '{0.__class__}'.format(x) }}", {"x": 1}),
    "format_map": ("{{ '{x.__class__}'.format_map(d) }}", {"d": {"x": 1}}),
    "list_mutation": ("{{ xs.append(4) }}{{ xs }}", {"xs": [1, 2, 3]}),
    "dict_mutation": ("{{ d.update(a=2) }}", {"d": {"a": 1}}),
    "huge_range": ("{{ range(10**9)|list|length }}", {}),
    "huge_repeat": ("{{ 'a' * 10**9 }}", {}),
    "huge_list_repeat": ("{{ ([1] * 10**8)|length }}", {}),
    "huge_power": ("{{ (10**10) ** (10**10) }}", {}),
    "wide_percent_format": ("{{ '%999999999s' % 'a' }}", {}),
    "wide_format_filter": ("{{ '%999999999d'|format(1) }}", {}),
    "ljust_bomb": ("{{ 'x'.ljust(10**9) }}", {}),
    "center_filter_bomb": ("{{ 'x'|center(10**9) }}", {}),
    "replace_bomb": ("{{ s.replace('', s) }}", {"s": "y" * 5000}),
    "to_bytes_bomb": ("{{ (5).to_bytes(10**9, 'big')|length }}", {}),
    "quadratic_codec": ("{{ s.encode('punycode') }}", {"s": "\u00e9" * 200_000}),
    "namespace_doubling": (
        "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        {},
    ),
    "macro_doubling": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}xx{% endif %}"
        "{% endmacro %}{{ f(60) }}",
        {},
    ),
    "shared_reference_doubling": (
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}"
        "{% set ns.l = [ns.l, ns.l] %}{% endfor %}{{ ns.l }}",
        {},
    ),
    "nested_loops": (
        "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
        {},
    ),
    "recursive_loop": (
        "{% for x in range(10000) recursive %}{% if loop.depth < 4 %}"
        "{{ loop(range(10000)) }}{% endif %}{% endfor %}",
        {},
    ),
    "unbounded_recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}),
}


@pytest.mark.parametrize("template,variables", ESCAPES.values(), ids=list(ESCAPES))
async def test_sandbox_escape_attempt_fails_cleanly(call, template, variables):
    await create_text(call, "attack", template)
    started = time.monotonic()
    with pytest.raises(InvalidRequest):
        await render(call, "attack", variables=variables)
    assert time.monotonic() - started < 10  # bounded, whatever it tried
    # No side effect, and the worker is intact: the next render on it just works.
    assert not CANARY.exists()
    await create_text(call, "after", "still {{ ok }}")
    assert (await render(call, "after", variables={"ok": "fine"}))["text"] == "still fine"


async def test_large_numbers_are_values_not_limits(call):
    template = (
        "{% macro at(ts) %}@{{ ts }}{% endmacro %}"
        "{{ 1500000|string }} {{ at(1700000000000) }} {{ '%d' % n }} {{ dict(n=n)['n'] }}"
    )
    await create_text(call, "numbers", template)
    out = await render(call, "numbers", variables={"n": 10**12})
    assert out["text"] == "1500000 @1700000000000 1000000000000 1000000000000"


async def test_cpu_bound_render_stops_at_the_time_limit(call):
    heavy = "{% for i in range(10000) %}{{ range(10000)|list|sort|sum }}{% endfor %}"
    await create_text(call, "heavy", heavy)
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as info:
        await render(call, "heavy")
    assert "time limit" in info.value.message
    assert time.monotonic() - started < 10
    await create_text(call, "light", "ok")
    assert (await render(call, "light"))["text"] == "ok"


async def test_output_beyond_the_limit_is_refused(call):
    await create_text(call, "big", "{% for i in range(5000) %}{{ chunk }}{% endfor %}")
    with pytest.raises(InvalidRequest) as info:
        await render(call, "big", variables={"chunk": "z" * 1000})
    assert "output limit" in info.value.message


async def test_oversized_variables_are_payload_too_large(call):
    await create_text(call, "vars", "{{ big|length }}")
    with pytest.raises(PayloadTooLarge):
        await render(call, "vars", variables={"big": "x" * 1_000_001})


async def test_compiled_versions_are_cached_and_reused(call, service):
    out = await create_text(call, "hot", "Hot {{ n }}")
    key = (call.tenant, out["template_id"], 1)
    await render(call, "hot", variables={"n": 1})
    assert service.renderer.cached(key)
    compiles = service.renderer.compiles
    for n in range(5):
        assert (await render(call, "hot", variables={"n": n}))["text"] == f"Hot {n}"
    assert service.renderer.compiles == compiles
    await call("update", {"name": "hot", "base_version": 1, "template": "Hotter {{ n }}"})
    assert (await render(call, "hot", label="latest", variables={"n": 2}))["text"] == "Hotter 2"
    assert service.renderer.compiles == compiles + 1


async def test_include_by_name_label_and_version(call):
    await create_text(call, "footer", "-- {{ sender }}")
    await call(
        "update",
        {
            "name": "footer",
            "base_version": 1,
            "template": "-- {{ sender }} (beta)",
            "labels": ["staging"],
        },
    )
    await create_text(
        call,
        "mail",
        'Hi.\n{% include "footer" %}|{% include "footer:staging" %}|{% include "footer:1" %}',
    )
    out = await render(call, "mail", variables={"sender": "Bo"})
    assert out["text"] == "Hi.\n-- Bo|-- Bo (beta)|-- Bo"


async def test_label_move_changes_what_an_include_renders(call):
    await create_text(call, "part", "v1")
    await call("update", {"name": "part", "base_version": 1, "template": "v2"})
    await create_text(call, "whole", '[{% include "part" %}]')
    assert (await render(call, "whole"))["text"] == "[v1]"
    await call("set_label", {"name": "part", "label": "production", "version": 2})
    assert (await render(call, "whole"))["text"] == "[v2]"


async def test_macros_can_be_imported_from_another_template(call):
    await create_text(call, "macros", "{% macro cite(id) %}[{{ id }}]{% endmacro %}")
    await create_text(call, "uses", '{% import "macros" as m %}See {{ m.cite("doc-1") }}.')
    assert (await render(call, "uses"))["text"] == "See [doc-1]."


async def test_include_cycles_are_rejected(call):
    await create_text(call, "ping", 'ping {% include "pong" %}')
    await create_text(call, "pong", 'pong {% include "ping" %}')
    with pytest.raises(InvalidRequest) as info:
        await render(call, "ping")
    assert "cycle" in info.value.message
    assert info.value.details == {"cycle": ["ping@1", "pong@1", "ping@1"]}


async def test_a_template_including_itself_is_a_cycle(call):
    await create_text(call, "selfish", 'me {% include "selfish" %}')
    with pytest.raises(InvalidRequest, match="cycle"):
        await render(call, "selfish")


async def test_including_another_label_of_itself_is_not_a_cycle(call):
    await create_text(call, "layered", "base")
    await call(
        "update",
        {
            "name": "layered",
            "base_version": 1,
            "template": 'top+{% include "layered" %}',
            "labels": ["staging"],
        },
    )
    assert (await render(call, "layered", label="staging"))["text"] == "top+base"


async def test_missing_include_is_reported_unless_ignored(call):
    await create_text(call, "needs", '{% include "absent" %}')
    with pytest.raises(InvalidRequest) as info:
        await render(call, "needs")
    assert info.value.details == {"include": "absent"}
    await create_text(call, "tolerant", 'ok{% include "absent" ignore missing %}')
    assert (await render(call, "tolerant"))["text"] == "ok"


async def test_includes_never_reach_another_tenant(call, client):
    other = Caller(client, f"t-{uuid.uuid4().hex[:10]}")
    await create_text(other, "private", "B's secret")
    await create_text(call, "snoop", '{% include "private" %}')
    with pytest.raises(InvalidRequest, match="not found"):
        await render(call, "snoop")


async def test_chat_templates_cannot_be_included(call):
    await call(
        "create",
        {"name": "convo", "type": "chat", "messages": [{"role": "user", "content": "hi"}]},
    )
    await create_text(call, "inc-chat", '{% include "convo" %}')
    with pytest.raises(InvalidRequest, match="chat template"):
        await render(call, "inc-chat")


async def test_dynamic_include_targets_are_refused_at_save(call):
    with pytest.raises(InvalidRequest, match="string literals"):
        await create_text(call, "dyn", "{% include which %}")
