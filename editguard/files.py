"""Reading the small files a user hands editguard (hyperparameters, calibrations, reports) as plain
data, strictly: a hostile or broken file gets a clear error, never a hang, a flood or a traceback.

YAML goes through yaml.SafeLoader (no Python objects) with anchors and aliases refused (a 517-byte
"billion laughs" file would expand into gigabytes) and a key given twice an error (YAML and JSON
would let the last one silently win); a file is UTF-8 and at most MAX_CONFIG_BYTES. The messages
never echo more than a bounded part of a value (editguard.errors.bounded).

A leaf: it imports only editguard.errors (and yaml, lazily).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from editguard.errors import DataError, bounded

# A YAML or JSON file editguard reads is refused past this size: a hyperparameter file is a few
# kilobytes; the cap bounds what a parser is asked to do even without aliases.
MAX_CONFIG_BYTES = 1 << 20


class ConfigFileError(DataError, ValueError):
    """A YAML or JSON file editguard reads that is not plain data: an alias or anchor, a duplicate
    key, a file too large, not UTF-8 (the caller wraps it into its error kind, naming the file)."""


@functools.lru_cache(maxsize=1)
def _yaml_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """yaml.SafeLoader with YAML 1.1's surprises taken out: 5e-4 (no dot) is a float, as in
        JSON and YAML 1.2; anchors and aliases are refused (a 517-byte "billion laughs" file would
        expand into gigabytes); a key given twice is an error, not the last one silently winning."""

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                mark = event.start_mark
                raise ConfigFileError(f"line {mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                                      "accepted; write the values out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:   # an unhashable key: SafeLoader's own error says so
                    continue
                if duplicate:
                    raise ConfigFileError(f"line {key_node.start_mark.line + 1}: key {bounded(key)} is given twice")
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigFileError(f"key {bounded(key)} is given twice")
        seen[key] = value
    return seen


def parse_config_text(data: bytes, kind: str, max_bytes: int = MAX_CONFIG_BYTES) -> Any:
    """The plain data in the bytes of a "json" or "yaml" file, parsed strictly: UTF-8, at most
    `max_bytes`, no YAML anchor or alias, no key given twice. ConfigFileError (or
    ValueError for bad syntax) otherwise; the message never echoes more than a bounded value."""
    if len(data) > max_bytes:
        raise ConfigFileError(f"{len(data)} bytes, more than the {max_bytes} accepted for this {kind} file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigFileError(f"not UTF-8 text (byte {err.start}: {bounded(data[err.start:err.start + 4])})") from None
    if kind == "json":
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err}") from None
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        text = str(err)
        raise ValueError(f"invalid YAML: {text if len(text) <= 400 else text[:400] + ' ...'}") from None
