"""Which of the router's built-in tools one request is offered: the registered tools the
config enables, the model takes and the key may use, narrowed by the request's own choice.

The filters, each applied to what the one before left, in registration order:

1. ``[tools] enabled`` (absent: every registered tool; a listed name that is not
   registered is simply not offered);
2. the model's ``tools`` flag (``false``: none);
3. the key's ``allowed_tools`` (absent: no filter; names compare exactly, as a model's
   function names do);
4. the request's ``"llmrouter": {"builtin_tools": ...}``: absent or ``true``, all that
   remain; ``false`` or ``[]``, none; a list, exactly those — each must have passed 1–3,
   or the request is a 400 (``builtin_tool_unavailable``) saying which filter stopped it.

Beyond the filters:

- a request with ``n`` > 1 is offered none: the loop follows one conversation, and n
  choices would each call tools of their own. Asking for some by name with ``n`` > 1 is a
  400 (param ``n``) rather than a silent nothing.
- ``tool_choice: "none"`` is offered none: the model may call no tool this turn, so a
  built-in one would only cost prompt tokens.
- a client tool named like an offered built-in one is a 400 (``tool_name_clash``), never
  one silently replacing the other. Only offered tools clash: a key not allowed a built-in
  tool may define its own of that name.
"""

from __future__ import annotations

from .config import ModelSettings, ToolSettings
from .errors import InvalidRequestError
from .schemas import ChatRequest, NamedToolChoice
from .store import KeyRecord
from .tools import RegisteredTool, ToolRegistry


def offered_tools(
    registry: ToolRegistry,
    settings: ToolSettings,
    model: ModelSettings,
    key: KeyRecord,
    request: ChatRequest,
) -> list[RegisteredTool]:
    """The built-in tools ``request`` is offered, in registration order (see the module
    docstring); an ``InvalidRequestError`` when it asks for one it cannot have, defines a
    tool of the same name as one it is offered, or names in ``tool_choice`` a tool that is
    neither its own nor offered."""
    offered = _offered(registry, settings, model, key, request)
    if isinstance(request.tool_choice, NamedToolChoice):
        _check_named_choice(request.tool_choice.function.name, request, offered)
    return offered


def _offered(
    registry: ToolRegistry,
    settings: ToolSettings,
    model: ModelSettings,
    key: KeyRecord,
    request: ChatRequest,
) -> list[RegisteredTool]:
    if not len(registry) and request.llmrouter is None:
        return []  # every request passes here, and most routers register no tool
    options = request.llmrouter
    asked = options.builtin_tools if options is not None else None
    if asked is False or asked == []:
        return []
    if request.n is not None and request.n > 1:
        if isinstance(asked, list):
            raise InvalidRequestError(
                f"Built-in tools are offered only to a request with one choice, and this "
                f"one asks for n={request.n}: set n to 1 or leave out "
                "'llmrouter.builtin_tools'.",
                param="n",
                code="builtin_tools_need_one_choice",
            )
        return []
    if request.tool_choice == "none":
        return []
    if isinstance(asked, list):
        for name in asked:
            reason = _unavailable(name, registry, settings, model, key)
            if reason is not None:
                raise InvalidRequestError(
                    f"The built-in tool '{name}' in 'llmrouter.builtin_tools' is not "
                    f"available: {reason}.",
                    param="llmrouter.builtin_tools",
                    code="builtin_tool_unavailable",
                )
        wanted = set(asked)
        offered = [tool for tool in registry if tool.name in wanted]
    elif not model.tools:
        return []
    else:
        offered = [
            tool
            for tool in registry.enabled(settings)
            if key.allowed_tools is None or tool.name in key.allowed_tools
        ]
    if request.tools and offered:
        _refuse_clash(request, offered)
    return offered


def _unavailable(
    name: str,
    registry: ToolRegistry,
    settings: ToolSettings,
    model: ModelSettings,
    key: KeyRecord,
) -> str | None:
    """Why ``name`` cannot be offered (the first filter that stops it), or None."""
    if name not in registry:
        return "no tool of that name is registered"
    if settings.enabled is not None and name not in settings.enabled:
        return "it is not enabled in the config ([tools] enabled)"
    if not model.tools:
        return f"the model '{model.id}' is not offered built-in tools (tools = false)"
    if key.allowed_tools is not None and name not in key.allowed_tools:
        return "this API key is not allowed it (its allowed_tools)"
    return None


def _check_named_choice(name: str, request: ChatRequest, offered: list[RegisteredTool]) -> None:
    """A named ``tool_choice`` forces a call to one of the request's tools or of the
    built-in ones it is offered (for the first round; see ``tool_exchange.py``)."""
    if any(t.function.name == name for t in request.tools or []):
        return
    if any(tool.name == name for tool in offered):
        return
    raise InvalidRequestError(
        f"tool_choice names '{name}', which is not among 'tools' nor the built-in tools "
        "this request is offered.",
        param="tool_choice",
    )


def _refuse_clash(request: ChatRequest, offered: list[RegisteredTool]) -> None:
    builtin = {tool.name for tool in offered}
    for tool in request.tools or []:
        if tool.function.name in builtin:
            raise InvalidRequestError(
                f"The tool '{tool.function.name}' in 'tools' has the name of one of this "
                "router's built-in tools, which this request is offered too: rename "
                'yours, or leave the built-in one out ("llmrouter": {"builtin_tools": '
                "false}, or a list without it).",
                param="tools",
                code="tool_name_clash",
            )
