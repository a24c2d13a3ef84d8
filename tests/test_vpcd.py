"""The vpcd bridge: framing against a local server that speaks like vpcd, then over the real pcscd."""
from __future__ import annotations

import logging
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from pcscd import MiniCard, card_state, wait_card, wait_until

from sscard.apdu import commands
from sscard.drivers import pcsc
from sscard.drivers.vpcd import FrameError, VpcdClient, frame, reader_name

TIMEOUT = 5.0


class FakeVpcd:
    """A TCP server on 127.0.0.1 that plays vpcd's side: accepts the card, sends frames, reads replies."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(TIMEOUT)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.conn, _ = self.server.accept()
        self.conn.settimeout(TIMEOUT)
        return self.conn

    def send(self, raw: bytes) -> None:
        self.conn.sendall(raw)

    def read_reply(self) -> bytes:
        header = self._exactly(2)
        return self._exactly(struct.unpack(">H", header)[0])

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def closed_by_card(self) -> bool:
        """True when the card closed the connection (recv gives EOF)."""
        try:
            return self.conn.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        if self.conn:
            self.conn.close()
        self.server.close()


@pytest.fixture
def fake():
    server = FakeVpcd()
    yield server
    server.close()


@pytest.fixture
def client_for(fake):
    clients: list[VpcdClient] = []

    def make(card=None, **kw) -> VpcdClient:
        client = VpcdClient(card or MiniCard(), port=fake.port, **kw).start()
        clients.append(client)
        fake.accept()
        return client

    yield make
    for client in clients:
        client.stop()


def test_frame_is_big_endian_length_prefixed():
    assert frame(b"\x04") == b"\x00\x01\x04"
    assert frame(bytes(300))[:2] == b"\x01\x2c"
    with pytest.raises(FrameError):
        frame(b"")


def test_reader_names_follow_ports():
    assert reader_name(35963) == "Virtual PCD 00 00" and reader_name(35964) == "Virtual PCD 00 01"


def test_controls_get_no_reply_and_atr_does(fake, client_for):
    card = MiniCard()
    client_for(card)
    fake.send(frame(b"\x01"))  # power on: no reply
    fake.send(frame(b"\x02"))  # reset: no reply
    fake.send(frame(b"\x04"))  # get ATR: the next bytes must be the ATR, nothing before
    assert fake.read_reply() == card.atr
    assert card.powered and card.power_cycles == 1
    fake.send(frame(b"\x00"))
    fake.send(frame(b"\x04"))
    assert fake.read_reply() == card.atr
    assert not card.powered


def test_apdu_is_answered_by_the_card(fake, client_for):
    client = client_for(MiniCard())
    fake.send(frame(commands.select_ssc().to_bytes()))
    assert fake.read_reply() == b"\x90\x00"
    fake.send(frame(bytes.fromhex("00A4000002EF05")))
    assert fake.read_reply() == b"\x90\x00"
    fake.send(frame(bytes.fromhex("00B2030400")))
    assert fake.read_reply() == b"\x03\x04\x03\x03\x03\x03\x90\x00"
    assert client.apdu_count == 3


def test_frames_split_in_pieces_are_read_whole(fake, client_for):
    client_for(MiniCard())
    raw = frame(commands.select_ssc().to_bytes())
    for i in range(len(raw)):  # one byte per TCP segment: a single recv would break here
        fake.send(raw[i:i + 1])
        time.sleep(0.002)
    assert fake.read_reply() == b"\x90\x00"


def test_largest_frame_is_accepted(fake, client_for):
    card = MiniCard()
    client_for(card)
    apdu = b"\x80\x10\x00\x00\x00\xff\xf8" + bytes(0xFFF8)  # extended Lc, 65535-byte payload
    fake.send(frame(apdu))
    assert fake.read_reply() == b"\x6d\x00"
    assert card.commands[-1] == apdu


@pytest.mark.parametrize("bad", [b"\x00\x00", b"\x00\x10\x00\xa4", b"\x00"], ids=["zero-length", "eof-mid-payload", "eof-mid-length"])
def test_malformed_frame_drops_and_reconnects_without_traceback(fake, client_for, caplog, bad):
    caplog.set_level(logging.INFO, logger="sscard.drivers.vpcd")
    card = MiniCard()
    client = client_for(card)
    fake.send(frame(b"\x01"))
    fake.send(bad)
    if bad != b"\x00\x00":
        fake.conn.shutdown(socket.SHUT_WR)  # EOF inside the frame
    assert fake.closed_by_card()
    fake.accept()  # the card comes back on a new connection
    fake.send(frame(b"\x04"))
    assert fake.read_reply() == card.atr
    assert client.connected.is_set()
    assert any("malformed frame" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)
    assert not card.powered  # the drop powered it down (and nobody powered it up since)


def test_unknown_control_is_ignored(fake, client_for):
    card = MiniCard()
    client_for(card)
    fake.send(frame(b"\x03"))
    fake.send(frame(b"\x04"))
    assert fake.read_reply() == card.atr


def test_card_failure_is_answered_6f00(fake, client_for):
    class Broken(MiniCard):
        def execute(self, apdu: bytes) -> bytes:
            raise RuntimeError("simulator bug")

    client_for(Broken())
    fake.send(frame(commands.select_ssc().to_bytes()))
    assert fake.read_reply() == b"\x6f\x00"
    fake.send(frame(b"\x04"))  # still connected
    assert fake.read_reply() == MiniCard().atr


def test_remove_closes_and_insert_reconnects(fake, client_for):
    client = client_for(MiniCard())
    client.remove()
    assert fake.closed_by_card()
    assert not client.inserted
    client.insert()
    fake.accept()
    wait_until(client.connected.is_set, TIMEOUT, "the card to reconnect")


def test_remove_after_n_apdus_leaves_the_next_unanswered(fake, client_for):
    client = client_for(MiniCard(), remove_after=2)
    for _ in range(2):
        fake.send(frame(commands.select_ssc().to_bytes()))
        assert fake.read_reply() == b"\x90\x00"
    fake.send(frame(commands.select_ssc().to_bytes()))
    assert fake.closed_by_card()
    assert client.apdu_count == 2 and not client.inserted


def test_client_waits_for_vpcd_to_listen():
    with socket.socket() as probe:  # a free port with nobody listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = VpcdClient(MiniCard(), port=port).start()
    try:
        time.sleep(0.3)  # a few refused connections
        assert not client.connected.is_set()
        server = socket.create_server(("127.0.0.1", port))
        server.settimeout(TIMEOUT)
        conn, _ = server.accept()
        conn.close()
        server.close()
    finally:
        client.stop()
    assert client._thread is not None and not client._thread.is_alive()


# --- over the real pcscd ----------------------------------------------------------------------

READER0 = reader_name(35963)
READER1 = reader_name(35964)


def test_card_visible_to_pcsc_and_removal_seen(pcscd, vpcd_card):
    slot = vpcd_card(MiniCard())
    with pcsc.connect(READER0) as connection:
        assert connection.transmit(commands.select_ssc()).sw == 0x9000
    slot.remove()
    assert card_state(READER0) == (False, None)
    slot.insert()
    with pcsc.connect(READER0) as connection:
        assert connection.transmit(commands.select_ssc()).sw == 0x9000


def test_client_reconnects_after_pcscd_restart(pcscd, vpcd_card):
    if not pcscd.started_here:
        pytest.skip("pcscd was already running: the tests restart only their own")
    card = MiniCard()
    vpcd_card(card)
    pcscd.restart()
    wait_card(READER0, True, timeout=10, atr=card.atr)
    with pcsc.connect(READER0) as connection:
        assert connection.transmit(commands.select_ssc()).sw == 0x9000


def test_simulate_two_cards_in_two_slots_and_sigusr1(pcscd):
    wait_card(READER0, present=False)
    wait_card(READER1, present=False)
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "simulate",
                             "--card", "adult", "--card", "minority"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_card(READER0)
        wait_card(READER1)
        atr0, atr1 = card_state(READER0)[1], card_state(READER1)[1]
        assert atr0 and atr1
        proc.send_signal(signal.SIGUSR1)
        wait_card(READER0, present=False)
        wait_card(READER1, present=False)
        proc.send_signal(signal.SIGUSR1)
        wait_card(READER0)
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "cards removed, simulator stopped" in err and "Traceback" not in err
    wait_card(READER0, present=False)
    wait_card(READER1, present=False)


def test_simulate_subprocess_fixture_reads_identity(vpcd_card):
    from sscard.terminal.card import SocialSecurityCard

    vpcd_card("adult", process=True)
    with pcsc.connect(READER0) as connection:
        identity = SocialSecurityCard(connection).read_identity()
    assert identity.name


def test_simulate_bad_profile_is_a_clear_error(pcscd):
    result = subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "simulate",
                             "--card", "/nonexistent/card.json"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 12, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("Error:")
