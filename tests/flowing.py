"""Shared parts for the counter-flow tests: a site on real files, virtual cards in memory, a terminal config."""
from __future__ import annotations

from pathlib import Path

import pytest

from drivers.memory import MemoryConnection
from drivers.simulator import load_card
from drivers.simulator.oldmedical import load_old_card
from queueing import Clock
from terminal.crypto import SoftwareKeyStore
from terminal.envelope import Operator, Station
from terminal.flows.common import ScriptedClerk, Site
from terminal.queue import Outbox

#: the clinic of docs/flows.md: Wenzhou (330300), so other-region.json (440300) is cross-region
STATION = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 1, Operator("C001", "李收费"))
PINS = {"adult": "246810", "not-activated": "123456", "other-region": "802613", "minority": "517293",
        "counterfeit": "246810", "blocked-pin": "135790"}


def sim(name: str, remove_after: int | None = None) -> MemoryConnection:
    """A virtual card (SSC or old medical card) in an in-memory reader."""
    card = load_old_card(name) if name.startswith("old-medical") else load_card(name)
    return MemoryConnection(card, name=f"sim:{name}", remove_after=remove_after)


def clerk(*pins: str) -> ScriptedClerk:
    return ScriptedClerk(list(pins))


@pytest.fixture
def site(tmp_path):
    with Outbox(tmp_path / "queue.sqlite", STATION, clock=Clock()) as outbox:
        yield Site(outbox, SoftwareKeyStore.bundled_test_keys())


def write_config(folder: Path, require_pin: bool = True) -> Path:
    """A terminal config for the clinic above, its queue in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "terminal.toml"
    path.write_text(
        f"""[institution]
code = "{STATION.fixmedins_code}"
name = "{STATION.fixmedins_name}"
region = "{STATION.region}"
[terminal]
number = {STATION.terminal_no}
[operator]
id = "{STATION.operator.opter}"
name = "{STATION.operator.opter_name}"
[keys]
store = "test"
[queue]
path = "queue.sqlite"
[central]
url = "http://127.0.0.1:9"
[desk]
require_pin = {str(require_pin).lower()}
""",
        encoding="utf-8",
    )
    return path
