"""Shared parts for the counter-flow tests: a site on real files with the virtual platform on a loopback
port, virtual cards in memory, a terminal config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from queueing import Clock

from sscard.central import CentralService
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.message.envelope import Operator, Station
from sscard.terminal.flows.common import ScriptedClerk, Site
from sscard.terminal.gateway import test_credentials
from sscard.terminal.keystore import SoftwareKeyStore
from sscard.terminal.online import Platform
from sscard.terminal.queue import Outbox

#: the clinic of docs/flows.md: Wenzhou (330300), so other-region.json (440300) is cross-region
STATION = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 1, Operator("C001", "李收费"))
#: the clinic's second window: its own terminal number, so its msgids never collide with the first's
WINDOW2 = Station("H33030200001", "温州市鹿城区示范诊所", "330300", 2, Operator("C002", "王药师"))
PINS = {"adult": "246810", "not-activated": "123456", "other-region": "802613", "minority": "517293",
        "counterfeit": "246810", "blocked-pin": "135790"}


def sim(name: str, remove_after: int | None = None) -> MemoryConnection:
    """A virtual card (SSC or old medical card) in an in-memory reader."""
    card = load_card(name)
    return MemoryConnection(card, name=f"sim:{name}", remove_after=remove_after)


def clerk(*pins: str) -> ScriptedClerk:
    return ScriptedClerk(list(pins))


@pytest.fixture
def platform(tmp_path):
    """The virtual platform on a loopback port (fault switches on), a fresh ledger per test."""
    with CentralService(tmp_path / "platform.sqlite", faults=True) as service:
        yield service


def open_site(path: Path, url: str, station: Station = STATION, **options) -> Site:
    """A site on the journal at ``path`` talking to the platform at ``url`` (TEST credentials); the
    caller closes ``site.outbox`` and ``site.platform``."""
    outbox = Outbox(path, station, clock=Clock(), **options)
    platform = Platform(outbox, url, test_credentials(station.fixmedins_code), timeout=5)
    return Site(outbox, SoftwareKeyStore.bundled_test_keys(), platform)


@pytest.fixture
def site(tmp_path, platform):
    opened = open_site(tmp_path / "queue.sqlite", platform.url)
    try:
        yield opened
    finally:
        opened.platform.close()
        opened.outbox.close()


def write_credentials(folder: Path, institution: str = STATION.fixmedins_code) -> Path:
    """The TEST gateway credentials of ``institution`` as a private credentials file in ``folder``."""
    credentials = test_credentials(institution)
    path = folder / f"credentials-{institution}.json"
    path.write_text(json.dumps({"kind": "gateway-credentials", "paasid": credentials.paasid,
                                "token": credentials.token}), encoding="utf-8")
    path.chmod(0o600)
    return path


def write_config(folder: Path, require_pin: bool = True, central: str = "http://127.0.0.1:9") -> Path:
    """A terminal config for the clinic above, its queue in ``folder``, the platform at ``central``
    with the TEST credentials in a private file (so no TEST-credentials warning)."""
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
url = "{central}"
credentials = "file:{write_credentials(folder).name}"
[desk]
require_pin = {str(require_pin).lower()}
""",
        encoding="utf-8",
    )
    path.chmod(0o600)  # as 'sscard config init' makes it (a wider one is warned about)
    return path


@pytest.fixture
def configs(tmp_path, platform):
    """The clinic's configuration and the bank's, each with its own journal, keys from the virtual PSAM,
    the virtual platform on a loopback port (its TEST credentials in private files)."""
    clinic = write_config(tmp_path / "clinic", central=platform.url)
    bank = write_config(tmp_path / "bank", central=platform.url)
    bank_credentials = write_credentials(tmp_path / "bank", "B33030000007")
    bank.write_text(bank.read_text(encoding="utf-8").replace("H33030200001", "B33030000007")
                    .replace("credentials-B33030000007.json", bank_credentials.name), encoding="utf-8")
    for config in (clinic, bank):
        text = config.read_text(encoding="utf-8")
        assert 'store = "test"' in text
        config.write_text(text.replace('store = "test"', 'store = "psam:sim:psam"'), encoding="utf-8")
    return {"clinic": clinic, "bank": bank}
