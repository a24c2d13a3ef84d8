"""Shared fixtures: the real PC/SC stack (pcscd + vsmartcard-vpcd) and simulated cards in it.

``pcscd`` (session): starts ``pcscd --foreground`` unless one already answers, stops it at the end;
skips with the reason when pcscd or the vpcd driver is not installed, except under
``SSCARD_REQUIRE_PCSCD=1`` (set by ``make test``, hence CI), where a missing stack fails the tests.
``vpcd_card`` (factory): ``vpcd_card(card_or_profile, slot=0, remove_after=None, process=False)``
inserts a simulated card in "Virtual PCD 00 0<slot>" and waits until pcscd sees it; every card is
removed at the end of the test. Pass a SimulatedCard object or a profile name (needs
``drivers.simulator.load_card``); ``process=True`` runs ``sscard simulate`` as a subprocess instead
of a thread in this process.

``fresh_virtual_cards`` (every test): the virtual cards' state folder (drivers/simulator/state.py)
is the test's own, so each test meets the factory cards and leaves nothing behind.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pcscd as stack

import sscard.apdu

CHECKOUT = Path(__file__).resolve().parent.parent
if Path(sscard.apdu.__file__).resolve().parent != CHECKOUT / "apdu":  # an editable install of another tree
    raise pytest.UsageError(f"sscard is installed from {Path(sscard.apdu.__file__).parent.parent}, not this checkout "
                            f"({CHECKOUT}): run 'pip install -e .' here (make venv) before its tests")


def pytest_collection_modifyitems(items):
    """Every test that uses pcscd (itself, or through ``vpcd_card``) is marked ``pcsc``, so that
    ``-m "not pcsc"`` leaves out every test that needs the shared readers, marked by hand or not."""
    for item in items:
        if "pcscd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pcsc)


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory):
    """A running pcscd with the vpcd readers (a :class:`tests.pcscd.Pcscd`)."""
    unavailable = pytest.fail if os.environ.get("SSCARD_REQUIRE_PCSCD") == "1" else pytest.skip
    reason = stack.why_unavailable()
    if reason:
        unavailable(reason)
    try:
        daemon = stack.Pcscd(tmp_path_factory.mktemp("pcscd") / "pcscd.log").start()
    except PermissionError as err:  # not root: cannot create /run/pcscd or start the daemon
        unavailable(f"cannot start pcscd as this user ({err}): start it as root first")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def vpcd_card(pcscd):
    """Factory: insert a simulated card in a vpcd slot; all of them are removed after the test."""
    cards: list = []

    def insert(card, slot: int = 0, remove_after: int | None = None, process: bool = False):
        if process:
            if not isinstance(card, str):
                raise TypeError("process=True takes a profile name or path")
            handle = stack.ProcessCard(card, slot, remove_after)
        else:
            if isinstance(card, str):
                from sscard.drivers.simulator import load_card

                card = load_card(card)
            handle = stack.ThreadCard(card, slot, remove_after)
        cards.append(handle)
        return handle.start()

    yield insert
    for handle in reversed(cards):
        handle.stop()


#: the packages' names before they moved under ``sscard``: run from a checkout they still import (the
#: folder is on sys.path), as a second copy of each module (docs/architecture.md, "One namespace")
OLD_NAMES = frozenset({"apdu", "drivers", "terminal", "central", "message", "fixtures"})


@pytest.fixture(autouse=True)
def one_copy_of_each_module():
    """Fails the test that imported one of our packages by its old top-level name."""
    yield
    stray = sorted(name for name in sys.modules if name.split(".")[0] in OLD_NAMES)
    for name in stray:  # reported once, by the test that loaded them
        del sys.modules[name]
    assert not stray, f"imported by the old name, not sscard.*: {stray}"


@pytest.fixture(autouse=True)
def fresh_virtual_cards(tmp_path_factory, monkeypatch):
    """Every test starts from the factory virtual cards: ``sim:`` cards remember in a folder of its own."""
    from sscard.drivers.simulator.state import STATE_ENV

    monkeypatch.setenv(STATE_ENV, str(tmp_path_factory.mktemp("sim-state")))


@pytest.fixture(autouse=True)
def journal_key(tmp_path_factory, monkeypatch):
    """Every test's journals are sealed with a key of its own (terminal/seal.py), never the user's."""
    path = tmp_path_factory.mktemp("journal-key") / "journal.key"
    monkeypatch.setenv("SSCARD_JOURNAL_KEY", str(path))
    return path
