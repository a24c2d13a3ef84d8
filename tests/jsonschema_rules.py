"""The rules every ``--json`` result and every API answer follows (docs/json.md, "One vocabulary"),
as a checker tests run on what commands and the service print."""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

#: the holder object's keys (terminal.card.holder)
HOLDER_KEYS = {"name", "id_number", "card_number", "issuing_region"}
#: names the vocabulary replaced: the card's state is ``activated``, an activation made ``activation``
RETIRED = {"active", "activated_now", "activated_by_this_registration", "activation_msgid"}
KEY = re.compile(r"^[a-z][a-z0-9_]*$")
YUAN = re.compile(r"^-?\d+\.\d{2}$")
#: strings shaped like yuan that are not money
NOT_MONEY = {"spec_version"}
TIME_LIKE = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?\+08:00$")
ATR = re.compile(r"^[0-9A-F]{2}( [0-9A-F]{2})*$")
MASKED_ID = re.compile(r"^\d{6}\*{8}[0-9X*]{4}$")


def violations(doc: Any, path: str = "$", full_id: bool = False) -> list[str]:
    """Every place ``doc`` breaks a rule, as ``path: what``; empty when it follows them all.
    ``full_id``: the command is meant to show the whole ID number."""
    found: list[str] = []
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            found += violations(item, f"{path}[{i}]", full_id)
        return found
    if isinstance(doc, str):
        if TIME_LIKE.search(doc) and not TIME.match(doc):
            found.append(f"{path}: time {doc!r} is not ISO 8601 with +08:00")
        return found
    if not isinstance(doc, dict):
        return found
    for key, value in doc.items():
        at = f"{path}.{key}"
        if not KEY.match(key):
            found.append(f"{at}: key not in snake case")
        if key in RETIRED:
            found.append(f"{at}: retired name (docs/json.md)")
        if key == "holder":
            if not isinstance(value, dict) or set(value) != HOLDER_KEYS:
                found.append(f"{at}: not the holder object {sorted(HOLDER_KEYS)}: {value!r}")
            elif not full_id and not MASKED_ID.match(str(value["id_number"])):
                found.append(f"{at}.id_number: not masked 6+4")
            continue
        if key == "activation" and value is not None and (not isinstance(value, dict) or not {"msgid", "infno"} <= set(value)):
            found.append(f"{at}: not null nor an activation {{msgid, infno}}")
        if key == "activated" and not isinstance(value, bool):
            found.append(f"{at}: not a boolean")
        if key == "atr" and value is not None and not (isinstance(value, str) and ATR.match(value)):
            found.append(f"{at}: ATR {value!r} not as hex bytes with spaces")
        if key.endswith("_fen"):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                found.append(f"{at}: fen not an integer")
            shown = doc.get(key.removesuffix("_fen"))
            if shown is not None and shown != f"{Decimal(value) / 100:.2f}":
                found.append(f"{at}: the yuan beside it says {shown!r}")
        elif isinstance(value, str) and YUAN.match(value) and f"{key}_fen" not in doc and key not in NOT_MONEY:
            found.append(f"{at}: yuan {value!r} without {key}_fen beside it")
        elif isinstance(value, float):
            found.append(f"{at}: a float (money is integer fen)")
        found += violations(value, at, full_id)
    return found
