"""What a JSON schema (response_format, a tool's parameters) may ask of the grammar compiler.

llguidance expands counted repetition into grammar rules, so a schema's numbers are memory:
measured on onnxruntime-genai 0.18 (CPU), `maxItems: 10000` compiles in 0.06 s into 26 MB,
`maxItems: 30000` into 79 MB, `maxItems: 100000` takes 1.5 s and 240 MB and then fails, and
`minItems: 1000000000` grew a runner to 21 GB until the kernel killed it. Strings
(`minLength`/`maxLength`) and numbers (`minimum`/`maximum`) compile to regular expressions and
cost next to nothing at any size, so only the counts below are bounded. The limits sit far
above any real schema (a model could not write 4,096 array items in a usual context) and keep one
grammar under ~100 MB and ~1 s: a count over `MAX_COUNT` is refused, and so is a schema whose
counts add up past `MAX_TOTAL_COUNT` (many arrays of 4,096 each).

Pure: a schema in, an `InvalidRequestError` naming the parameter path and the limit out.
"""

from __future__ import annotations

import json
from typing import Any

from ortserve.server.errors import InvalidRequestError

MAX_COUNT = 4096  # minItems, maxItems, minContains, maxContains, minProperties, maxProperties
MAX_TOTAL_COUNT = 16384  # those counts summed over the whole schema
MAX_STRING_LENGTH = 1_000_000  # minLength / maxLength: cheap to compile, but no output is that long
MAX_DEPTH = 64  # nested schemas (properties, items, anyOf, ...)
MAX_NODES = 10_000  # schemas (objects) inside one schema, properties and enum values included
MAX_SCHEMA_BYTES = 256 * 1024  # the schema as compact JSON text

COUNTS = ("minItems", "maxItems", "minContains", "maxContains", "minProperties", "maxProperties")
LENGTHS = ("minLength", "maxLength")


def check_schema(schema: Any, param: str) -> None:
    """Refuse a schema that would cost the grammar compiler more than the limits above; `param` is where the
    schema sits in the request (e.g. "response_format.json_schema.schema"), extended to the offending key."""
    size = len(json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidRequestError(
            f"Invalid value for '{param}': the schema is {size:,} bytes; at most {MAX_SCHEMA_BYTES:,} are allowed.",
            param=param,
        )
    _Walk(param).visit(schema, param, 0)


class _Walk:
    def __init__(self, root: str):
        self.root = root
        self.total = 0
        self.nodes = 0

    def visit(self, node: Any, path: str, depth: int) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                self.visit(item, f"{path}.{i}", depth)
            return
        if not isinstance(node, dict):
            return
        enum = node.get("enum")
        self.nodes += 1 + (len(enum) if isinstance(enum, list) else 0)
        if self.nodes > MAX_NODES:
            raise InvalidRequestError(
                f"Invalid value for '{self.root}': the schema has more than {MAX_NODES:,} subschemas and enum values.",
                param=self.root,
            )
        if depth > MAX_DEPTH:
            raise InvalidRequestError(
                f"Invalid value for '{path}': schemas may nest at most {MAX_DEPTH} levels deep.", param=path
            )
        for key in COUNTS:
            self._bound(node, key, path, MAX_COUNT, counted=True)
        for key in LENGTHS:
            self._bound(node, key, path, MAX_STRING_LENGTH, counted=False)
        for key, value in node.items():
            if key in ("enum", "const", "default", "examples", "x-guidance") or key.startswith("$comment"):
                continue
            if isinstance(value, (dict, list)):
                self.visit(value, f"{path}.{key}", depth + 1)

    def _bound(self, node: dict, key: str, path: str, limit: int, *, counted: bool) -> None:
        value = node.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        where = f"{path}.{key}"
        if value > limit:
            raise InvalidRequestError(
                f"Invalid value for '{where}': {value:g} is more than this server allows ({limit:,}).", param=where
            )
        if counted:
            self.total += int(value)
            if self.total > MAX_TOTAL_COUNT:
                raise InvalidRequestError(
                    f"Invalid value for '{where}': the schema's item and property counts add up to more than "
                    f"{MAX_TOTAL_COUNT:,}.",
                    param=where,
                )
