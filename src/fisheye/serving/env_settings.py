"""Settings read from `PREFIX_NAME` environment variables into a pydantic model.

The subset of pydantic-settings' environment source that FishEye's settings use, without
its import (about a tenth of a second of a server's cold start on 2 CPUs): names in any
case, keyword arguments before the environment, list/dict/set/tuple fields read as JSON,
every value validated by the model as pydantic-settings passes it (so a bad
`FISHEYE_PORT` gets the same ValidationError).
"""

from __future__ import annotations

import json
import os
import types
import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo

JSON_TYPES = (list, dict, set, frozenset, tuple)


class ReadAsText:
    """Marks a list field whose variable is text the field's own validator splits (e.g.
    comma-separated), not JSON: `Annotated[list[str], ReadAsText]`."""


class EnvSettings(BaseModel):
    """A model whose fields default to the `env_prefix + NAME` variables (any case).

    Keyword arguments win over the environment, the environment over the field defaults.
    A variable of a list, dict, set or tuple field is decoded as JSON (unless the field is
    marked `ReadAsText`); text that is not JSON is validated as it is, so the field's own
    error says what is wrong. Defaults are validated too, as pydantic-settings does.
    """

    env_prefix: ClassVar[str] = ""
    model_config = ConfigDict(
        extra="ignore",
        validate_default=True,
        protected_namespaces=("model_validate", "model_dump"),
    )

    def __init__(self, **values: Any) -> None:
        # In field order, as pydantic-settings merges them: the input a validation error
        # quotes reads the same.
        given = {name: values.pop(name) for name in type(self).model_fields if name in values}
        super().__init__(**{**self.from_environment(), **given, **values})

    @classmethod
    def from_environment(cls) -> dict[str, Any]:
        """The fields set by environment variables, as the model will validate them."""
        prefix = cls.env_prefix.lower()
        environ = {name.lower(): value for name, value in os.environ.items()}
        found: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            value = environ.get(prefix + name.lower())
            if value is None:
                continue
            if _is_json(field):
                try:
                    found[name] = json.loads(value)
                    continue
                except ValueError:
                    pass  # validated as text: the field's own error names it
            found[name] = value
        return found


def _is_json(field: FieldInfo) -> bool:
    if ReadAsText in field.metadata:
        return False
    return _holds_collection(field.annotation)


def _holds_collection(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_holds_collection(arg) for arg in typing.get_args(annotation))
    return (origin or annotation) in JSON_TYPES
