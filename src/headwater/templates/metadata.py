"""Flex Template ``metadata.json`` generated from a pipeline's flag declarations.

Input: a pipeline name (``headwater.pipelines.NAMES``). Output: the ``metadata.json`` dict that
``gcloud dataflow flex-template build --metadata-file`` takes, and the local check of launch
parameters against that same dict. Nothing here is written by hand: every parameter comes from
the pipeline's declared flags (:mod:`headwater.pipelines.catalog`, the same ones its ``Options``
registers with Beam), so the template and
``headwater run PIPELINE --help`` cannot disagree.

Mapping of one :class:`~headwater.pipelines.options.Flag` to one template parameter:

* ``name`` is the argparse dest (the flag without ``--``), ``label`` and ``helpText`` the
  declared label and help, ``isOptional`` is ``not required`` (as the pipeline needs it).
* ``regexes``: the declared regex; booleans get ``^(true|false)$``; flags with ``choices`` get
  an anchored alternation of the choices and ``enumOptions`` ``[{"value", "label"}]``.
* ``defaultValue``: the declared default as a string (booleans ``"true"``/``"false"``); never
  for a required flag, a repeated flag or a secret-looking name.
* ``paramType``: ``BOOLEAN``, ``ENUM``, ``NUMBER`` (integer flags) or ``TEXT``.
* Repeated flags (``kafka_config``) travel as ONE string parameter holding a JSON list of the
  items, e.g. ``["security.protocol=SASL_SSL","sasl.mechanism=PLAIN"]``; the launcher
  (``main.py``, :func:`headwater.templates.launcher.pipeline_argv`) expands it back into repeated
  ``--kafka_config=ITEM`` flags. Each item is checked locally against the flag's own regex.
* Local-only flags (:data:`LOCAL_ONLY`: stream replay, summary file, HTML report) are left out.

``streaming`` is ``true`` for pipelines that can read an unbounded Kafka topic (those whose
``source`` flag offers ``kafka``: ``windowed_metrics``, ``stream_etl``, ``kafka_to_kafka``), with
``supportsExactlyOnce: true`` and ``supportsAtLeastOnce: false`` (at-least-once streaming mode
would double-count aggregates and re-emit deduplicated records). ``replay_dead_letters`` reads
files only and is a batch template.

>>> meta = metadata_for("windowed_metrics")
>>> [p["name"] for p in meta["parameters"]][:2]
['source', 'input']
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from headwater.io.kafka import mask_setting
from headwater.pipelines import catalog
from headwater.pipelines.options import FLAGS, Flag

__all__ = [
    "LOCAL_ONLY",
    "check_parameters",
    "decode_repeated",
    "encode_repeated",
    "is_streaming_template",
    "is_unbounded_launch",
    "metadata_for",
    "template_flags",
]

#: Flags that only make sense for a local run; never template parameters.
LOCAL_ONLY = tuple(name for name, flag in FLAGS.items() if flag.local_only)

_BOOL_RE = "^(true|false)$"
_SECRET_RE = re.compile(r"pass(word)?|secret|token|credential|private|api[_.]?key", re.I)
_REPEATED_HELP = (
    " Template value: a JSON list of the items, e.g. "
    '["security.protocol=SASL_SSL","sasl.mechanism=PLAIN"].'
)
_REPEATED_RE = r"^\[.*\]$"


def template_flags(name: str) -> list[Flag]:
    """The flags of pipeline ``name`` that a template carries (local-only flags left out)."""
    return [flag for flag in catalog.spec(name).flags() if flag.name not in LOCAL_ONLY]


def is_streaming_template(name: str) -> bool:
    """Whether pipeline ``name`` can run as an unbounded (streaming) job.

    True when it declares a ``source`` flag that offers ``kafka`` (an unbounded read unless
    ``stop_at_end``/``max_records``).
    """
    return any(
        flag.name == "source" and "kafka" in (flag.choices or ()) for flag in template_flags(name)
    )


def is_unbounded_launch(name: str, params: Mapping[str, Any]) -> bool:
    """Whether launching ``name`` with ``params`` starts an unbounded (streaming) read.

    True for a Kafka source without ``stop_at_end`` or ``max_records``.
    """
    if not is_streaming_template(name):
        return False
    defaults = {f.name: f.default for f in template_flags(name)}
    source = str(params.get("source", defaults.get("source") or "")).strip()
    stop = str(params.get("stop_at_end", "false")).strip().lower() in ("true", "1", "yes")
    return source == "kafka" and not stop and not params.get("max_records")


def _is_integer(flag: Flag) -> bool:
    if flag.boolean or flag.repeated or flag.choices:
        return False
    try:
        return isinstance(flag.type("1"), int)
    except (TypeError, ValueError):
        return False


def _parameter(flag: Flag) -> dict[str, Any]:
    help_text = flag.help + (_REPEATED_HELP if flag.repeated else "")
    param: dict[str, Any] = {
        "name": flag.name,
        "label": flag.label,
        "helpText": help_text,
        "isOptional": not flag.required,
    }
    if flag.boolean:
        param["regexes"] = [_BOOL_RE]
        param["paramType"] = "BOOLEAN"
    elif flag.choices:
        param["regexes"] = ["^(" + "|".join(re.escape(c) for c in flag.choices) + ")$"]
        param["enumOptions"] = [{"value": c, "label": c} for c in flag.choices]
        param["paramType"] = "ENUM"
    elif flag.repeated:
        param["regexes"] = [_REPEATED_RE]
        param["paramType"] = "TEXT"
    else:
        if flag.regex:
            param["regexes"] = [flag.regex]
        param["paramType"] = "NUMBER" if _is_integer(flag) else "TEXT"
    secret = bool(_SECRET_RE.search(flag.name))
    if not (flag.required or flag.repeated or secret):
        if flag.boolean:
            param["defaultValue"] = "true" if flag.default else "false"
        elif flag.default is not None:
            param["defaultValue"] = str(flag.default)
    return param


def metadata_for(name: str) -> dict[str, Any]:
    """The Flex Template ``metadata.json`` of pipeline ``name`` (``ValueError`` if unknown)."""
    meta: dict[str, Any] = {
        "name": f"headwater {name}",
        "description": catalog.spec(name).description,
    }
    if is_streaming_template(name):
        meta["streaming"] = True
        meta["supportsAtLeastOnce"] = False
        meta["supportsExactlyOnce"] = True
    meta["parameters"] = [_parameter(flag) for flag in template_flags(name)]
    return meta


def encode_repeated(items: list[str] | tuple[str, ...]) -> str:
    """The template value of a repeated flag: a compact JSON list of strings."""
    return json.dumps([str(item) for item in items], separators=(",", ":"))


def decode_repeated(value: str, *, name: str) -> list[str]:
    """The items of a repeated flag's template value; a non-list value is one item.

    ``ValueError`` names the parameter when the value looks like JSON but is not a list of
    strings.
    """
    text = value.strip()
    if not text.startswith("["):
        return [value] if value else []
    try:
        items = json.loads(text)
    except ValueError:
        raise ValueError(f"parameter {name!r}: not a JSON list of strings") from None
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"parameter {name!r}: not a JSON list of strings")
    return items


def _as_text(name: str, value: Any, flag: Flag) -> str:
    if flag.repeated:
        if isinstance(value, (list, tuple)):
            return encode_repeated(list(value))
        if isinstance(value, str):
            return value
        raise ValueError(f"parameter {name!r}: expected a list of KEY=VALUE strings")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"parameter {name!r}: expected a string, got {type(value).__name__}")


def check_parameters(name: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Checks launch parameters against ``metadata_for(name)``; returns them as strings.

    Refuses (``ValueError`` naming the parameter) an unknown parameter, a missing required one,
    a value that fails the parameter's regexes or enum options, or a value the pipeline's own
    flag type rejects. Values of repeated flags are never echoed (they may hold secrets).

    >>> check_parameters("stream_etl", {"output": "gs://b/o", "dead_letter": "gs://b/d",
    ...                                 "stop_at_end": True})["stop_at_end"]
    'true'
    """
    meta = metadata_for(name)
    specs = {p["name"]: p for p in meta["parameters"]}
    flags = {f.name: f for f in template_flags(name)}
    result: dict[str, str] = {}
    for key in params:
        if key not in specs:
            local = " (a local-only flag)" if key in LOCAL_ONLY else ""
            raise ValueError(
                f"unknown parameter {key!r}{local} for template {name!r}; "
                f"known: {', '.join(sorted(specs))}"
            )
    for key, spec in specs.items():
        flag = flags[key]
        if key not in params or params[key] is None:
            if not spec["isOptional"]:
                raise ValueError(f"parameter {key!r} is required: {flag.help}")
            continue
        text = _as_text(key, params[key], flag)
        if text == "" and not spec["isOptional"]:
            raise ValueError(f"parameter {key!r} is required: {flag.help}")
        if flag.repeated:
            for item in decode_repeated(text, name=key):
                if flag.regex and not re.match(flag.regex, item):
                    shown = mask_setting(item)
                    raise ValueError(
                        f"parameter {key!r}: item {shown!r} does not match {flag.regex}"
                    )
            result[key] = encode_repeated(decode_repeated(text, name=key))
            continue
        if text != "":
            for regex in spec.get("regexes", []):
                if not re.match(regex, text):
                    raise ValueError(f"parameter {key!r}: {text!r} does not match {regex}")
        options = [o["value"] for o in spec.get("enumOptions", [])]
        if options and text not in options:
            raise ValueError(f"parameter {key!r}: {text!r} is not one of {', '.join(options)}")
        if text != "":
            try:
                flag.convert(text)
            except ValueError as exc:
                raise ValueError(f"parameter {key!r}: {exc}") from None
        result[key] = text
    return result
