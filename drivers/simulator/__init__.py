"""The virtual chips: the social security card, the old medical insurance card and the PSAM.

``load_card("adult")`` gives a virtual SSC personalised from a bundled profile (fixtures/cards/NAME.json)
or from a profile file path; ``load_card("psam")`` the virtual PSAM (a profile of ``"kind": "psam"``),
``load_card("old-medical-lina")`` a virtual old medical insurance card (``"kind": "old-medical"``);
see docs/simulator.md.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sscard.drivers.simulator.base import SimulatedCard
from sscard.drivers.simulator.oldmedical import KIND as OLD_MEDICAL, OldMedicalCard, OldMedicalProfile
from sscard.drivers.simulator.profile import Profile, bundled_names, load_profile, locate, parse_profile
from sscard.drivers.simulator.psam import PSAMCard, PSAMProfile, load_psam_profile, parse_psam_profile
from sscard.drivers.simulator.ssc import SSCCard
from sscard.drivers.simulator.validator import read_profile_file

__all__ = [
    "OldMedicalCard", "OldMedicalProfile", "PSAMCard", "PSAMProfile", "Profile", "SSCCard", "SimulatedCard",
    "bundled_names", "load_card", "load_profile", "load_psam_profile",
]


#: the prefix of a strict T=0 chip's spec (``strict:adult``)
STRICT = "strict:"
#: each profile kind's parser and chip; a profile of no known kind goes to the SSC's parser, which
#: names its ``kind`` as the problem
KINDS: dict[str, tuple[Callable[[Any, str], Any], Callable[[Any], SimulatedCard]]] = {
    "ssc": (parse_profile, SSCCard),
    "psam": (parse_psam_profile, PSAMCard),
    OLD_MEDICAL: (OldMedicalProfile.from_dict, OldMedicalCard),
}


def strict(card: SimulatedCard) -> SimulatedCard:
    """``card`` made a strict T=0 chip (``CardOS.strict_t0``); ProfileError for a T=1 one."""
    from sscard.drivers.errors import ProfileError
    from sscard.drivers.simulator.cardos import CardOS

    if not isinstance(card, CardOS) or card.protocol != "T=0":
        raise ProfileError("strict: is for T=0 cards (the profile's protocol is not T=0)")
    card.strict_t0 = True
    return card


def load_card(name_or_path: str | Path) -> SimulatedCard:
    """A fresh virtual chip from a bundled profile name (``adult``, ``psam``) or a profile path.

    The profile's ``kind`` decides (:data:`KINDS`): ``psam`` gives a :class:`PSAMCard`, ``old-medical``
    an :class:`~drivers.simulator.oldmedical.OldMedicalCard`, anything else an :class:`SSCCard` (whose
    parser refuses a wrong kind); ``hostile:MODE[:PROFILE[:AFTER]]`` a
    :class:`~drivers.simulator.hostile.HostileCard`; ``strict:PROFILE`` a strict T=0 chip
    (:func:`strict`). ProfileError on any problem.
    """
    if str(name_or_path).startswith(STRICT):  # a T=0 chip as strict as a real one (docs/simulator.md)
        return strict(load_card(str(name_or_path)[len(STRICT):]))
    if str(name_or_path).startswith("hostile:"):  # a spoiled chip: drivers/simulator/hostile.py
        from sscard.drivers.simulator.hostile import HostileCard, parse_spec

        mode, profile, after = parse_spec(str(name_or_path))
        return HostileCard(load_card(profile), mode, after)
    path = locate(name_or_path)
    data = read_profile_file(path)
    kind = data.get("kind") if isinstance(data, dict) else None
    parse, chip = KINDS.get(kind, KINDS["ssc"]) if isinstance(kind, str) else KINDS["ssc"]
    return chip(parse(data, path.name))
