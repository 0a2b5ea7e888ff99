"""An API route that calls its endpoint directly, for the one route clients call in a loop.

FastAPI solves a route's dependencies and parameters on every request. Profiling
``GET /v1/jobs/{id}`` under 50 pollers showed that solving (bearer header, settings, store, the job)
cost more CPU than everything the route itself does: about 0.2 ms of the 0.3 ms a poll took, and
even a route with one path parameter and no dependencies pays about 0.1 ms. This route class keeps
what FastAPI gives a route at start-up (its OpenAPI entry, ``response_model`` and ``responses`` in
the docs, its place in the router) and replaces only the per-request handler: the endpoint gets the
request and its path parameters, as strings, and returns a ``Response`` it built itself.

An endpoint may therefore declare only the ``Request`` and path parameters; anything FastAPI would
have to solve (a dependency, a query, header, cookie or body parameter) is refused when the route is
added, so it cannot be silently skipped. Security is documented with ``openapi_extra`` and checked
by the endpoint (``service.auth.caller``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

Endpoint = Callable[..., Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        solved = self.dependant
        unsolved = [
            *(d.name or getattr(d.call, "__name__", "?") for d in solved.dependencies),
            *(p.name for p in (*solved.query_params, *solved.header_params, *solved.cookie_params)),
            *(p.name for p in solved.body_params),
        ]
        problems = [f"parameters only FastAPI would solve: {', '.join(unsolved)}"] if unsolved else []
        problems += [] if solved.request_param_name else ["no Request parameter"]
        problems += [] if inspect.iscoroutinefunction(endpoint) else ["not async"]
        if problems:
            raise TypeError(
                f"DirectRoute {path}: the endpoint {getattr(endpoint, '__name__', endpoint)} has " + "; ".join(problems)
            )

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Endpoint = self.endpoint
        request_name = self.dependant.request_param_name or "request"

        async def handle(request: Request) -> Response:
            return await endpoint(**{request_name: request}, **request.path_params)

        return handle
