"""Shared parts for the queue, uploader and central tests: a station, a settable clock, real files.

Test modules import the fixtures from here (``from queueing import outbox, central``).
"""
from __future__ import annotations

import datetime as dt
import socket

import pytest

from terminal.central import CentralService
from terminal.envelope import CST, Fen, Operator, Station
from terminal.queue import Outbox

STATION = Station("H11010500001", "北京测试医院", "110105", 7, Operator("D001", "王医生"))
CARD = "110105D156000005001234567890ABCD"
OTHER_CARD = "310101D15600000500FEDCBA0987654"


def free_port() -> int:
    """A loopback port nothing listens on (for an unreachable service, or one started later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Clock:
    """A settable clock (Beijing time); ``tick`` moves it on."""

    def __init__(self, start: dt.datetime = dt.datetime(2026, 3, 1, 9, 30, 0, tzinfo=CST)) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, seconds: float = 1) -> None:
        self.now += dt.timedelta(seconds=seconds)


def registration(outbox: Outbox, insured_region: str = "110105", card_sn: str | None = CARD, **extra):
    """An outpatient registration (2201) as the desk flow would queue it."""
    body = {"data": {"psn_no": "P0001", "insutype": "310", "med_type": "11", "begntime": "2026-03-01 09:30:00", **extra}}
    return outbox.add("2201", body, insured_region=insured_region, card_sn=card_sn)


def purchase(outbox: Outbox, total: object = Fen(2350), account: object = Fen(2350)):
    """A pharmacy settlement (2102) paid from the personal account."""
    body = {"data": {"psn_no": "P0001", "med_type": "41", "medfee_sumamt": total, "acct_pay": account}}
    return outbox.add("2102", body, insured_region="110105", card_sn=CARD)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path, clock):
    with Outbox(tmp_path / "queue.sqlite", STATION, clock=clock) as box:
        yield box


@pytest.fixture
def central(tmp_path):
    with CentralService(tmp_path / "central.sqlite") as service:
        yield service
