"""The virtual chips: the social security card, the old medical insurance card and the PSAM.

``load_card("adult")`` gives a virtual SSC personalised from a bundled profile (fixtures/cards/NAME.json)
or from a profile file path; see docs/simulator.md.
"""
from __future__ import annotations

from pathlib import Path

from drivers.simulator.base import SimulatedCard
from drivers.simulator.profile import Profile, bundled_names, load_profile
from drivers.simulator.ssc import SSCCard

__all__ = ["Profile", "SSCCard", "SimulatedCard", "bundled_names", "load_card", "load_profile"]


def load_card(name_or_path: str | Path) -> SSCCard:
    """A fresh virtual SSC from a bundled profile name (``adult``) or a profile path; ProfileError otherwise."""
    return SSCCard(load_profile(name_or_path))
