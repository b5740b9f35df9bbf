"""The base of every typed config (datasets.yaml, run config) and the one-line errors they raise.

Config models are pydantic models that forbid unknown keys and do not coerce types ("yes" is not a
bool, 2.5 is not a count). A validation error becomes a ConfigError naming the field by its path, e.g.
`selection_config.strategies[0].strategy.stopping_condition_minimum_distance: unknown field; allowed: type`.
A value quoted in the line is cut to SHOWN_CHARS characters (a 10 kB string pasted into a field stays one
readable line); a field marked `hide_input` (a place where a secret may be pasted by mistake) is never quoted.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from datapool_pipeline.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)

SHOWN_CHARS = 80
"""At most this many characters of a value (or of a key in a field's path) are quoted in an error line."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for a one-line message: cut to `limit` characters with an ellipsis, saying how long the
    value was, e.g. `'aaaa...' (10240 characters)` or `[1, 2, 3, ...] (5000 items)`."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str | bytes):  # keep the closing quote or bracket
        return f"{text[:limit - 4]}...{text[-1]} ({len(value)} characters)"
    if isinstance(value, list | tuple | dict | set | frozenset):
        return f"{text[:limit - 4]}...{text[-1]} ({len(value)} items)"
    return f"{text[:limit - 3]}... ({len(text)} characters)"


# A quoted Python string (repr) inside a message: 'text' or "text" with backslash escapes, not an apostrophe
# inside a word (the dataset's table).
_QUOTED = re.compile(r"(?<!\w)(?:'(?:[^'\\\n]|\\.)*'" + r'|"(?:[^"\\\n]|\\.)*")(?!\w)')


def trim_quoted(message: str, limit: int = SHOWN_CHARS) -> str:
    """`message` with every quoted string longer than `limit` cut (validators quote the values they refuse)."""

    def cut(match: re.Match[str]) -> str:
        text = match.group(0)
        return text if len(text) <= limit else f"{text[:limit - 4]}...{text[0]} ({len(text) - 2} characters)"

    return _QUOTED.sub(cut, message)


class StrictModel(BaseModel):
    """Unknown keys are errors, values are not coerced, and a parsed config never changes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


def validate(
    model: type[Model], raw: Any, where: str = "", context: dict[str, Any] | None = None, source: str = ""
) -> Model:
    """`model.model_validate(raw)`, with the first error as a one-line ConfigError naming the field
    (after `source: `, e.g. the file's name, when given)."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        message = describe(exc, model, where)
        raise ConfigError(f"{source}: {message}" if source else message) from None


def describe(exc: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """One line for the first error: the field's path, what is wrong, and the value given."""
    errors = exc.errors(include_url=False)
    # An unknown key (often a typo) explains the other errors of its mapping: name it first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = list(error["loc"])
    path = field_path(loc, where)
    if _field_extra(model, loc).get("hide_input"):  # e.g. a secret pasted where a variable's name belongs
        return f"{path}: must be {_doc(model, loc)}"
    if error["type"] == "extra_forbidden":
        allowed = sorted(allowed_fields(model, loc[:-1]))
        return f"{path}: unknown field; allowed: {', '.join(allowed)}"
    # Sequences are tuples inside (hashable, frozen); users write lists.
    message = str(error["msg"]).removeprefix("Value error, ").replace("tuple", "list").replace("Tuple", "List")
    message = trim_quoted(message)
    if error["type"] == "missing":
        return f"{path}: required, {_doc(model, loc) or 'missing'}"
    if error["type"] in ("value_error", "assertion_error"):
        # A model-level check may name the field inside the model: "credentials.input: ...".
        inner = re.match(r"^((?:\[\d+\]|[a-z_]+)(?:\.[a-z_]+|\[\d+\])*): (.*)$", message)
        if inner:
            joint = "" if inner[1].startswith("[") or not path else "."
            path, message = f"{path}{joint}{inner[1]}", inner[2]
        return f"{path}: {message}" if path else message
    return f"{path}: {_plain(error, model, loc) or message}, got {shown(error.get('input'))}"


def _walk(model: type[BaseModel], loc: list[Any]) -> tuple[Any, Any]:
    """(the FieldInfo of the last field `loc` names, the model found at `loc`); dict keys and list indexes
    are skipped, so ('datasets', 'ds', 'embedding') ends at DatasetSpec.embedding and EmbeddingSpec."""
    current: Any = model
    last: Any = None
    for part in loc:
        info = _field(current, part)
        if info is not None:
            last, current = info, _inner_model(info.annotation)
    return last, current


def _field_bound(model: type[BaseModel], loc: list[Any], name: str) -> Any:
    info, _ = _walk(model, loc)
    metadata = info.metadata if info is not None else []
    return next((getattr(m, name) for m in metadata if hasattr(m, name)), None)


def _literal_choices(model: type[BaseModel], loc: list[Any]) -> list[str]:
    info, _ = _walk(model, loc)
    annotation = info.annotation if info is not None else None
    while typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return [str(a) for a in typing.get_args(annotation)] if typing.get_origin(annotation) is typing.Literal else []


def _field_extra(model: type[BaseModel], loc: list[Any]) -> dict[str, Any]:
    info, _ = _walk(model, loc)
    extra = (info.json_schema_extra if info is not None else None) or {}
    return extra if isinstance(extra, dict) else {}


def _plain(error: Any, model: type[BaseModel], loc: list[Any]) -> str:
    """Pydantic's messages in the words of a config file ("true or false", "a mapping")."""
    kind, ctx = error["type"], error.get("ctx") or {}
    words = {
        "bool_type": "must be true or false",
        "int_type": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "string_type": "must be a string",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
        "tuple_type": "expected a list",
        "list_type": "expected a list",
    }
    if kind in ("int_type", "int_from_float", "int_parsing") and _field_bound(model, loc, "ge") == 1:
        return "must be a positive integer"
    if kind in words:
        return words[kind]
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        if kind == "greater_than_equal" and limit == 1 and isinstance(error.get("input"), int):
            return "must be a positive integer"
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        choices = _literal_choices(model, loc)
        return f"must be one of {', '.join(choices)}" if choices else f"must be {ctx.get('expected', '?')}"
    if kind == "string_pattern_mismatch":
        hint = _field_extra(model, loc).get("hint")
        return f"must be {hint or _doc(model, loc) or 'of the documented form'}"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    return ""


def field_path(loc: list[Any], where: str = "") -> str:
    """('selection_config', 'strategies', 0, 'strategy') -> selection_config.strategies[0].strategy; a long
    key (an unknown field, a mapping's key) is cut to SHOWN_CHARS characters."""
    text = where
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith("function-"):
            name = str(part) if len(str(part)) <= SHOWN_CHARS else f"{str(part)[:SHOWN_CHARS - 3]}..."
            text += f".{name}" if text else name
    return text


def allowed_fields(model: type[BaseModel], loc: list[Any]) -> set[str]:
    """The field names of the model found at `loc` inside `model` (dict keys and list indexes skipped)."""
    _, current = _walk(model, loc)
    if not _is_model(current):
        return set()
    # Fields filled in by the loader (a dataset's name comes from its key) are not for users to write.
    return {
        f.validation_alias if isinstance(f.validation_alias, str) else n
        for n, f in current.model_fields.items()
        if not (f.json_schema_extra or {}).get("derived")
    }


def _doc(model: type[BaseModel], loc: list[Any]) -> str:
    info, _ = _walk(model, loc)
    description = (info.description if info is not None else None) or ""
    first = description.split(". ")[0].rstrip(".")
    return first[:1].lower() + first[1:]


def _field(model: Any, part: Any) -> Any:
    """The FieldInfo named `part` (by name or validation alias) in a model, or None."""
    if not (_is_model(model) and isinstance(part, str)):
        return None
    if part in model.model_fields:
        return model.model_fields[part]
    return next((f for f in model.model_fields.values() if f.validation_alias == part), None)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _inner_model(annotation: Any) -> Any:
    """The model inside `Model`, `Model | None`, `list[Model]`, `tuple[Model, ...]`, `dict[str, Model]`."""
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple, dict, typing.Annotated):
        for arg in typing.get_args(annotation):
            inner = _inner_model(arg)
            if inner is not None:
                return inner
    return None
