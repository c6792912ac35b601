"""One route of the API: a method, a path template, a handler, a line for the endpoint
list, and the error shape it answers in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .wire import Response

#: ``handler(router, request, *path_parameters)``
Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    method: str
    #: below the API's prefix; ``{name}`` takes one path segment, ``{name:path}`` (last
    #: only) the rest of the path, slashes included
    template: str
    handler: Handler
    summary: str
    #: errors render in seed 003's envelope (``{"success": false, "error": …}``), not
    #: OpenAI's body
    enveloped: bool = False

    @property
    def shown(self) -> str:
        """The template as endpoint lists show it (``{model_id}``, not ``{model_id:path}``)."""
        return self.template.replace(":path}", "}")

    def match(self, path: str) -> tuple[str, ...] | None:
        """The path parameters (``()`` without any) when ``path`` is this route's."""
        expected = self.template.split("/")
        given = path.split("/")
        parameters: list[str] = []
        for index, part in enumerate(expected):
            if part.endswith(":path}"):
                rest = "/".join(given[index:])
                return (*parameters, rest) if rest else None
            if index >= len(given):
                return None
            if part.startswith("{"):
                if not given[index]:
                    return None
                parameters.append(given[index])
            elif part != given[index]:
                return None
        return tuple(parameters) if len(given) == len(expected) else None
