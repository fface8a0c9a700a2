"""Route lookup for the bridge's hot path, with Starlette's answer but not its cost.

Starlette's router tries every route's regex in order (about a microsecond each) on every
request. The bridge knows its routes up front, so a request for a fixed path (``POST
/api/v1/cache/get``) is one dict lookup, and only templated paths are matched by regex.
The answer is always the one Starlette's router would give: the first route in table
order whose path and method both match, with the same path parameters. Anything the
table does not fully match (unknown paths, wrong methods, the operations endpoints) is
left to the Starlette app behind it, which answers 404/405 exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import Match
from starlette.routing import Route as HttpRoute
from starlette.types import Scope

#: What a full match yields: the route and its converted path parameters.
Found = tuple[HttpRoute, dict[str, Any]]


class RouteTable:
    def __init__(self, routes: Sequence[HttpRoute]) -> None:
        self._routes = tuple(routes)
        self._templated = tuple(r for r in self._routes if r.param_convertors)
        methods = sorted({m for r in self._routes for m in r.methods or ()})
        # For every fixed path, the route Starlette would pick per method, worked out once
        # by asking the routes themselves (an earlier template may shadow a fixed path:
        # `GET /prompts/context` goes to `GET /prompts/{name}` if only POST is fixed).
        self._fixed: dict[str, dict[str, Found]] = {}
        for route in self._routes:
            if route.param_convertors or route.path in self._fixed:
                continue
            winners: dict[str, Found] = {}
            for method in methods:
                found = self._scan(
                    self._routes, {"type": "http", "path": route.path, "method": method}
                )
                if found is not None:
                    winners[method] = found
            self._fixed[route.path] = winners

    def match(self, scope: Scope) -> Found | None:
        """The route (and path parameters) for ``scope``, or ``None`` to let Starlette answer."""
        if scope.get("root_path"):
            return self._scan(self._routes, scope)  # rare: mounted under a prefix
        fixed = self._fixed.get(scope["path"])
        if fixed is not None:
            found = fixed.get(scope["method"])
            return None if found is None else (found[0], dict(found[1]))
        return self._scan(self._templated, scope)

    @staticmethod
    def _scan(routes: Sequence[HttpRoute], scope: Scope) -> Found | None:
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                return route, child["path_params"]
        return None
