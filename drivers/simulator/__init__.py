"""The virtual chips: the social security card, the old medical insurance card and the PSAM.

``load_card("adult")`` gives a virtual SSC personalised from a bundled profile (fixtures/cards/NAME.json)
or from a profile file path; ``load_card("psam")`` the virtual PSAM (a profile of ``"kind": "psam"``);
see docs/simulator.md.
"""
from __future__ import annotations

from pathlib import Path

from drivers.simulator.base import SimulatedCard
from drivers.simulator.profile import Profile, bundled_names, load_profile, locate, profile_kind
from drivers.simulator.psam import PSAMCard, PSAMProfile, load_psam_profile
from drivers.simulator.ssc import SSCCard

__all__ = [
    "PSAMCard", "PSAMProfile", "Profile", "SSCCard", "SimulatedCard",
    "bundled_names", "load_card", "load_profile", "load_psam_profile",
]


#: the prefix of a strict T=0 chip's spec (``strict:adult``)
STRICT = "strict:"


def strict(card: SimulatedCard) -> SimulatedCard:
    """``card`` made a strict T=0 chip (``CardOS.strict_t0``); ProfileError for a T=1 one."""
    from drivers.errors import ProfileError
    from drivers.simulator.cardos import CardOS

    if not isinstance(card, CardOS) or card.protocol != "T=0":
        raise ProfileError("strict: is for T=0 cards (the profile's protocol is not T=0)")
    card.strict_t0 = True
    return card


def load_card(name_or_path: str | Path) -> SimulatedCard:
    """A fresh virtual chip from a bundled profile name (``adult``, ``psam``) or a profile path.

    The profile's ``kind`` decides: ``psam`` gives a :class:`PSAMCard`, anything else an
    :class:`SSCCard` (whose loader refuses a wrong kind); ``hostile:MODE[:PROFILE[:AFTER]]`` a
    :class:`~drivers.simulator.hostile.HostileCard`; ``strict:PROFILE`` a strict T=0 chip
    (:func:`strict`). ProfileError on any problem.
    """
    if str(name_or_path).startswith(STRICT):  # a T=0 chip as strict as a real one (docs/simulator.md)
        return strict(load_card(str(name_or_path)[len(STRICT):]))
    if str(name_or_path).startswith("hostile:"):  # a spoiled chip: drivers/simulator/hostile.py
        from drivers.simulator.hostile import HostileCard, parse_spec

        mode, profile, after = parse_spec(str(name_or_path))
        return HostileCard(load_card(profile), mode, after)
    path = locate(name_or_path)
    if profile_kind(path) == "psam":
        return PSAMCard(load_psam_profile(path))
    return SSCCard(load_profile(path))
