"""Field types for pydantic schemas of JSON input (API bodies and queries, task payloads) that accept
exactly what their JSON Schema admits.

pydantic's lax mode takes more than the schema it publishes ("2" or true for an integer, " 2" or
"2_000" in a query), its strict mode less (2.0, which JSON Schema counts as an integer); either way
a request valid under the schema could be refused, or an invalid one taken. Patterns spell their
characters out (no \\s, \\w, \\d), so that JSON Schema's regexes, Python's and pydantic's (Rust) agree.
"""

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

#: printable text: no control character (a NUL could not even be stored)
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"
#: any text without NUL, which no database text column stores (the API's parser refuses it)
NO_NUL = r"^[^\x00]*$"

_DIGITS = re.compile(r"-?[0-9]+")


def _not_an_integer() -> PydanticCustomError:
    return PydanticCustomError("int_type", "Input should be a valid integer")


def _json_integer(value: Any) -> Any:
    """A JSON integer: an int, or a float without a fraction (2.0); not a bool, a string or inf."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _not_an_integer()
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):  # json reads 1e400 as inf
            raise _not_an_integer()
        return int(value)
    return value


def _query_integer(value: Any) -> Any:
    """An integer as a query string spells it: digits, maybe a minus sign, nothing else."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise _not_an_integer()
    return value


#: an integer of a JSON body (bounds with Field(ge=..., le=...); in an optional, use json_int)
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


def json_int(**bounds: int) -> Any:
    """JsonInt with bounds (``ge``, ``le``) that the schema states on the integer itself, also as a
    member of an optional's anyOf (Field(ge=...) beside ``JsonInt | None`` would not)."""
    return Annotated[int, Field(**bounds), BeforeValidator(_json_integer)]


#: an integer query parameter
QueryInt = Annotated[int, BeforeValidator(_query_integer)]
