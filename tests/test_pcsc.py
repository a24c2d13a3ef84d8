"""The PC/SC driver over a real pcscd with simulated cards in vsmartcard-vpcd's virtual readers."""
from __future__ import annotations

import ctypes
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema_rules import violations
from pcscd import MiniCard, Pcscd, wait_card, wait_until
from smartcard import scard

from sscard.apdu import commands
from sscard.apdu.command import Command
from sscard.apdu.errors import SSCardError
from sscard.drivers import pcsc
from sscard.drivers.errors import (
    CardRemovedError,
    NoCardError,
    ReaderError,
    ReaderNotFoundError,
    SharingViolationError,
    TransportError,
)
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.vpcd import DEFAULT_PORT, VpcdClient
from sscard.terminal.card import SocialSecurityCard
from sscard.terminal.cardsecurity import unlocker
from sscard.terminal.cli import main
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.keystore import SoftwareKeyStore

pytestmark = pytest.mark.pcsc

ROOT = Path(__file__).resolve().parents[1]
READER0 = "Virtual PCD 00 00"
READER1 = "Virtual PCD 00 01"
#: no pcscd listens there: libpcsclite (client side) takes its socket path from this variable
NO_DAEMON = {**os.environ, "PCSCLITE_CSOCK_NAME": "/nonexistent/pcscd.comm"}


def identity_apdus() -> list[Command]:
    """The identity read as public readers do it: SELECT SSC, EF05 + 7 records, EF06 + 7 records."""
    out = [commands.select_ssc()]
    for fid in (0xEF05, 0xEF06):
        out.append(commands.select_fid(fid))
        out += [commands.read_record(n) for n in range(1, 8)]
    return out


def exchange_all(connection, apdus: list[Command]) -> list[bytes]:
    """Each response as data || SW1 SW2."""
    return [(r.data + r.sw.to_bytes(2, "big")) for r in map(connection.transmit, apdus)]


def load_profile(name: str):
    from sscard.drivers.simulator import load_card

    return load_card(name)


# --- readers, specs ---------------------------------------------------------------------------

def test_list_readers_shows_both_vpcd_slots(pcscd):
    assert pcsc.list_readers()[:2] == [READER0, READER1]


@pytest.mark.parametrize("spec", ["0", READER0, "pcd 00 00", "00 00", "3B 68 00 00 00 73 C8 40 13 00 90 00"])
def test_connect_by_index_name_part_or_atr(vpcd_card, spec):
    vpcd_card(MiniCard())
    with pcsc.connect(spec) as connection:
        assert connection.name == READER0
        assert connection.atr == MiniCard().atr
        assert connection.virtual  # vsmartcard's reader: the TEST keys may vouch for its cards


def test_atr_spec_picks_the_reader_holding_that_card(vpcd_card):
    vpcd_card(MiniCard())
    other = MiniCard(atr=bytes.fromhex("3B0212AB"))
    vpcd_card(other, slot=1)
    with pcsc.connect("3B:02:12:AB") as connection:
        assert connection.name == READER1


def test_hex_looking_name_part_is_a_reader_not_an_atr(vpcd_card):
    """docs/pcsc.md: "00 01" is a part of "Virtual PCD 00 01" (not 3B/3F: not an ATR)."""
    vpcd_card(MiniCard(), slot=1)
    with pcsc.connect("00 01") as connection:
        assert connection.name == READER1


def test_unknown_reader_lists_the_readers(pcscd):
    with pytest.raises(ReaderNotFoundError) as err:
        pcsc.connect("Gemalto")
    assert READER0 in str(err.value) and READER1 in str(err.value)
    assert exit_code(err.value) == 3


def test_ambiguous_name_part_is_refused(pcscd):
    with pytest.raises(ReaderNotFoundError, match="several readers"):
        pcsc.connect("Virtual")


def test_reader_index_out_of_range(pcscd):
    with pytest.raises(ReaderNotFoundError, match="No reader number 9"):
        pcsc.connect("9")


def test_empty_reader_is_no_card(pcscd):
    wait_card(READER1, present=False)
    with pytest.raises(NoCardError) as err:
        pcsc.connect("1")
    assert exit_code(err.value) == 4 and "insert the card" in str(err.value)


def test_atr_nobody_has_is_no_card(pcscd):
    with pytest.raises(NoCardError, match="No card with ATR 3B 00 11 22"):
        pcsc.connect("3B001122")


# --- exchanging APDUs -------------------------------------------------------------------------

@pytest.mark.parametrize("t0", [False, True], ids=["T1-style", "T0-61xx"])
def test_same_bytes_as_the_memory_driver(vpcd_card, t0):
    vpcd_card(MiniCard(t0=t0))
    with pcsc.connect(READER0) as connection:
        over_pcscd = exchange_all(connection, identity_apdus())
        count = connection.apdu_count
    memory = MemoryConnection(MiniCard(t0=t0))
    assert over_pcscd == exchange_all(memory, identity_apdus())
    assert count == memory.apdu_count == 17 + t0  # one GET RESPONSE on T=0


def test_t0_get_response_through_pcscd(vpcd_card):
    card = vpcd_card(MiniCard(t0=True)).card
    with pcsc.connect("0") as connection:
        response = connection.transmit(commands.select_ssc())
    assert (response.data, response.sw) == (MiniCard.FCI, 0x9000)
    assert card.commands[-1] == bytes((0x00, 0xC0, 0x00, 0x00, len(MiniCard.FCI)))  # pyscard left 61xx to us


def test_6cxx_reissue_through_pcscd(vpcd_card):
    card = vpcd_card(MiniCard(strict_le=True)).card
    with pcsc.connect("0") as connection:
        connection.transmit(commands.select_ssc()).check()
        connection.transmit(commands.select_fid(0xEF06)).check()
        response = connection.transmit(commands.read_record(2, le=1))
    assert (response.data, response.sw) == (b"\x09\x03abc", 0x9000)
    assert card.commands[-2:] == [bytes.fromhex("00B2020401"), bytes.fromhex("00B2020405")]


@pytest.mark.parametrize("profile", ["adult", "minority", "not-activated", "other-region"])
def test_profile_identity_bytes_identical_to_memory(vpcd_card, profile):
    from sscard.terminal.card import SocialSecurityCard

    vpcd_card(load_profile(profile))
    with pcsc.connect(READER0) as connection:
        over_pcscd = exchange_all(connection, identity_apdus())
    unlock = unlocker(SoftwareKeyStore.bundled_test_keys())  # other-region (3.00): EF06 after authentication
    with pcsc.connect(READER0) as connection:  # a fresh session
        identity = SocialSecurityCard(connection).read_identity(unlock)
    memory = MemoryConnection(load_profile(profile))
    assert over_pcscd == exchange_all(memory, identity_apdus())  # without it, the same 69 82 for EF06 on both
    assert identity == SocialSecurityCard(MemoryConnection(load_profile(profile))).read_identity(unlock)


def test_disconnect_powers_the_card_down(vpcd_card):
    card = vpcd_card(MiniCard()).card
    with pcsc.connect("0") as connection:
        connection.transmit(commands.select_ssc()).check()
        assert card.powered and card.app_selected
    deadline = time.monotonic() + 3
    while card.powered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not card.powered and not card.app_selected  # volatile state gone with the session


def test_a_closed_connection_refuses_commands_as_the_memory_driver_does(vpcd_card):
    """After disconnect() both drivers raise the same TransportError (exit 4), nothing reaches the chip."""
    card = vpcd_card(MiniCard()).card
    connection = pcsc.connect(READER0)
    connection.disconnect()
    memory = MemoryConnection(MiniCard())
    memory.disconnect()
    sent = len(card.commands)
    errors = []
    for closed in (connection, memory):
        with pytest.raises(TransportError) as err:
            closed.transmit(commands.select_ssc())
        errors.append((type(err.value), str(err.value), exit_code(err.value)))
    assert errors[0] == errors[1] == (TransportError, "The connection to the card is closed", 4)
    assert len(card.commands) == sent and memory.card.commands == []


# --- failures ---------------------------------------------------------------------------------

def test_card_removed_mid_read_is_card_removed(vpcd_card):
    vpcd_card(MiniCard(), remove_after=3)
    with pcsc.connect("0") as connection:
        for command in identity_apdus()[:3]:
            assert connection.transmit(command).sw == 0x9000
        with pytest.raises(CardRemovedError) as err:
            connection.transmit(commands.read_record(2))
    assert "removed" in str(err.value) and exit_code(err.value) == 4


def test_removed_then_next_command_is_card_removed(vpcd_card):
    slot = vpcd_card(MiniCard())
    with pcsc.connect("0") as connection:
        connection.transmit(commands.select_ssc()).check()
        slot.remove()
        with pytest.raises(CardRemovedError):
            connection.transmit(commands.select_fid(0xEF05))


def test_cli_read_card_removed_mid_read_exit_4(vpcd_card):
    vpcd_card(MiniCard(), remove_after=3)
    result = CliRunner().invoke(main, ["read", "--reader", READER0])
    assert result.exit_code == 4, result.output
    assert "card was removed during the operation" in result.output


def test_cli_read_not_a_social_security_card(vpcd_card):
    vpcd_card(MiniCard(ssc=False))
    result = CliRunner().invoke(main, ["read", "--reader", "0"])
    assert result.exit_code == 5, result.output
    assert "not a social security card" in result.output


def test_exclusive_blocks_others_sharing_violation(vpcd_card):
    vpcd_card(MiniCard())
    with pcsc.connect("0", exclusive=True) as first:
        with pytest.raises(SharingViolationError) as err:
            pcsc.connect("0")
        assert exit_code(err.value) == 3 and "Another program" in str(err.value)
        assert first.transmit(commands.select_ssc()).sw == 0x9000
    with pcsc.connect("0") as shared:
        with pytest.raises(SharingViolationError):
            pcsc.connect("0", exclusive=True)
        assert shared.transmit(commands.select_ssc()).sw == 0x9000


def test_cli_exclusive_flag_refused_while_another_program_holds_the_card(vpcd_card):
    vpcd_card("adult")
    with pcsc.connect("0", disposition="leave"):
        shared = CliRunner().invoke(main, ["read", "--reader", "0", "--json"])
        exclusive = CliRunner().invoke(main, ["--exclusive", "read", "--reader", "0"])
        again = CliRunner().invoke(main, ["read", "--reader", "0", "--json"])  # the flag was this run's only
    assert shared.exit_code == 0, shared.output
    assert exclusive.exit_code == 3, exclusive.output
    assert "Another program" in exclusive.output
    assert again.exit_code == 0, again.output


def test_shared_connections_coexist(vpcd_card):
    vpcd_card(MiniCard())
    with pcsc.connect("0", disposition="leave") as one, pcsc.connect("0", disposition="leave") as two:
        assert one.transmit(commands.select_ssc()).sw == two.transmit(commands.select_ssc()).sw == 0x9000


def test_protocol_t1_only_on_a_t0_card_is_refused(vpcd_card):
    vpcd_card(MiniCard())  # vpcd offers T=0 for this ATR (no TD1)
    with pytest.raises(Exception) as err:
        pcsc.connect("0", protocol="T1")
    assert issubclass(err.type, SSCardError)  # one of ours, never pyscard's


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)


def test_no_pcscd_is_service_not_running():
    code = (
        "from sscard.drivers import pcsc\n"
        "from sscard.drivers.errors import ServiceNotRunningError\n"
        "from sscard.terminal.cli.exits import exit_code\n"
        "for call in (pcsc.list_readers, lambda: pcsc.connect('0'), pcsc.reader_status):\n"
        "    try:\n"
        "        call()\n"
        "    except ServiceNotRunningError as err:\n"
        "        print(exit_code(err), err)\n"
    )
    result = run_python(code, NO_DAEMON)
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith("3 PC/SC service not running") for line in lines)


@pytest.mark.parametrize("args", [["readers"], ["read", "--reader", "0"], ["watch", "--timeout", "0.3", "--reader", "0"]])
def test_cli_without_pcscd_says_so(args):
    result = subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                            env=NO_DAEMON, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3, result.stderr
    assert "PC/SC service not running" in result.stderr and "Traceback" not in result.stderr


# --- CLI: readers, watch ----------------------------------------------------------------------

def test_cli_readers_shows_card_and_atr(vpcd_card):
    vpcd_card(MiniCard())
    result = CliRunner().invoke(main, ["readers"])
    assert result.exit_code == 0, result.output
    line0, line1 = result.output.splitlines()[:2]
    assert line0.startswith(f"0  {READER0}") and "3B 68 00 00 00 73 C8 40 13 00 90 00" in line0
    assert line1.startswith(f"1  {READER1}") and "no card" in line1
    rows = json.loads(CliRunner().invoke(main, ["readers", "--json"]).output)
    assert rows[0] == {"index": 0, "reader": READER0, "card": True, "atr": "3B 68 00 00 00 73 C8 40 13 00 90 00",
                       "mute": False, "in_use": False, "exclusive": False}
    assert violations(rows) == []  # docs/json.md


def start_watch(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "watch", "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().startswith("watching readers")
    time.sleep(0.3)  # its first look at the readers
    return proc


def test_watch_sees_insertion_then_removal(vpcd_card):
    wait_card(READER0, present=False)
    watch = start_watch("--count", "2", "--timeout", "20", "--reader", READER0)
    try:
        slot = vpcd_card(MiniCard())
        slot.remove()
        out, err = watch.communicate(timeout=25)
    finally:
        watch.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["reader"], e["atr"]) for e in events] == [
        ("inserted", READER0, "3B 68 00 00 00 73 C8 40 13 00 90 00"),
        ("removed", READER0, "3B 68 00 00 00 73 C8 40 13 00 90 00"),
    ]
    assert violations(events) == []  # docs/json.md: the time ISO 8601 with +08:00
    assert watch.returncode == 0, err


def test_watch_of_an_unknown_reader_is_exit_3_naming_the_readers(vpcd_card):
    for as_json in (False, True):
        result = CliRunner().invoke(main, ["watch", "--reader", "nosuch", "--timeout", "1", *(["--json"] if as_json else [])])
        assert result.exit_code == 3, result.output
        assert "Reader 'nosuch' not found" in result.output and READER0 in result.output
    assert json.loads(result.stdout.splitlines()[-1])["error"]["code"] == "reader_not_found"
    # a part of a name, and an index, are watched as in every command
    assert CliRunner().invoke(main, ["watch", "--reader", "PCD", "--timeout", "0.5"]).exit_code == 0
    assert CliRunner().invoke(main, ["watch", "--reader", "1", "--timeout", "0.5"]).exit_code == 0


def test_watch_survives_a_pcscd_restart(pcscd, vpcd_card):
    if not pcscd.started_here:
        pytest.skip("pcscd was already running: the tests restart only their own")
    slot = vpcd_card(MiniCard())
    watch = start_watch("--count", "1", "--timeout", "30")
    try:
        pcscd.restart()
        wait_card(READER0, present=True)  # the vpcd client reconnected by itself
        time.sleep(1.5)  # watch re-establishes its context (retry every second)
        slot.remove()
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["present", "removed"], err
    assert "PC/SC service not running: waiting" in err and "PC/SC service back" in err


def test_watch_with_no_reader_at_all_ticks_and_times_out(pcscd, tmp_path):
    """pcscd with no reader: only the PnP pseudo reader is watched; its first look times out, which is
    "no change", not a reason to look again at once (that was a busy loop that never reached --timeout)."""
    if not pcscd.started_here:
        pytest.skip("pcscd was already running: the tests replace only their own")
    empty = tmp_path / "reader.conf.d"
    empty.mkdir()
    with pcscd.replaced_by(Pcscd(tmp_path / "pcscd.log", config_dir=empty)):
        assert pcsc.list_readers() == []
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        watch = start_watch("--timeout", "2")
        try:
            out, err = watch.communicate(timeout=10)
        finally:
            watch.kill()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the watch process alone was reaped
    assert watch.returncode == 0 and out == "", err
    assert "timeout after 2 s" in err
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 1.5, f"watch used {cpu:.1f} s of CPU in 2 s: a busy loop"


def opensc_tool_sees_a_card(reader: str) -> bool:
    """What ``opensc-tool --list-readers`` (a third-party PC/SC client) says of the reader."""
    listed = subprocess.run(["opensc-tool", "--list-readers"], capture_output=True, text=True, timeout=10).stdout
    return any(line.split()[1] == "Yes" for line in listed.splitlines() if line.endswith(reader) and line[:1].isdigit())


def test_a_reader_named_in_chinese_is_listed_read_and_watched(pcscd, tmp_path):
    """A reader configured as pcscd's FRIENDLYNAME "德卡 T10 [社保卡]" (pyscard passes reader names to
    SCardGetStatusChange as ASCII: readers and watch failed with an internal error)."""
    if not pcscd.started_here:
        pytest.skip("pcscd was already running: the tests replace only their own")
    config = tmp_path / "reader.conf.d"
    config.mkdir()
    vpcd = Path("/etc/reader.conf.d/vpcd").read_text(encoding="utf-8")
    assert 'FRIENDLYNAME "Virtual PCD"' in vpcd
    (config / "vpcd").write_text(vpcd.replace('"Virtual PCD"', '"德卡 T10 [社保卡]"'), encoding="utf-8")
    reader = "德卡 T10 [社保卡] 00 00"
    with pcscd.replaced_by(Pcscd(tmp_path / "pcscd.log", config_dir=config)):
        watch = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "watch", "--json",
                                  "--count", "2", "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client = VpcdClient(load_profile("adult"), port=DEFAULT_PORT)
        try:
            assert watch.stderr.readline().startswith("watching readers")
            time.sleep(0.5)
            client.start()
            wait_until(lambda: opensc_tool_sees_a_card(reader), 10, f"a card in {reader}")
            listed = json.loads(sscard("readers", "--json").stdout)
            assert [(row["reader"], row["card"]) for row in listed] == [(reader, True), ("德卡 T10 [社保卡] 00 01", False)]
            read = sscard("read", "--json", "--reader", "社保卡] 00 00")
            assert read.returncode == 0, read.stderr
            assert json.loads(read.stdout)["name"] == "张伟"
            client.remove()
            out, err = watch.communicate(timeout=25)
        finally:
            watch.kill()
            client.stop()
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["reader"]) for e in events] == [("inserted", reader), ("removed", reader)], err


# --- interop with a third-party PC/SC client --------------------------------------------------

def opensc_tool_responses(reader: str, apdus: list[Command]) -> list[bytes]:
    """Run ``opensc-tool -r READER -s APDU ...`` and parse each response (data then SW1 SW2)."""
    args = ["opensc-tool", "-r", reader]
    for apdu in apdus:
        args += ["-s", apdu.to_bytes().hex(":")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    out: list[bytes] = []
    data: bytearray | None = None
    sw = b""
    for line in result.stdout.splitlines():
        received = re.match(r"Received \(SW1=0x([0-9A-Fa-f]{2}), SW2=0x([0-9A-Fa-f]{2})\)", line)
        if received:
            if data is not None:
                out.append(bytes(data) + sw)
            data, sw = bytearray(), bytes.fromhex(received[1] + received[2])
        elif line.startswith("Sending:"):
            continue
        elif data is not None:
            hexpart = re.match(r"^((?:[0-9A-F]{2} ){1,16})", line)
            if hexpart:
                data += bytes.fromhex(hexpart[1])
    if data is not None:
        out.append(bytes(data) + sw)
    return out


def opensc_reader_index(reader: str) -> str:
    """opensc-tool's ``-r`` takes the index of its own reader list (``opensc-tool --list-readers``)."""
    result = subprocess.run(["opensc-tool", "--list-readers"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        listed = re.match(r"^\s*(\d+)\s+\S+\s+(.+?)\s*$", line)
        if listed and listed[2] == reader:
            return listed[1]
    raise AssertionError(f"opensc-tool does not list {reader}: {result.stdout}")


@pytest.mark.parametrize("profile, slot", [("adult", 0), ("other-region", 1)], ids=["T0-slot0", "T1-slot1"])
def test_opensc_tool_sees_our_simulated_card_and_gets_the_same_bytes(vpcd_card, profile, slot):
    """Issue 3: a third-party PC/SC client sees OUR virtual SSC (drivers/simulator) as a card and gets
    the bytes our driver gets. On T=0 (adult) the SELECT is sent with Le (case 4): OpenSC answers a
    case-3 command's 61xx with a bare 9000 and drops the FCI (sc_get_response with no Le), where our
    Connection fetches it; with Le both do the GET RESPONSE."""
    assert shutil.which("opensc-tool"), "opensc-tool is missing: make system installs the opensc package"
    reader = (READER0, READER1)[slot]
    vpcd_card(profile, slot=slot)
    select = commands.select_ssc()
    apdus = [select.with_le(256)] + identity_apdus()[1:]
    with pcsc.connect(reader, disposition="leave") as connection:
        ours = exchange_all(connection, apdus)
    theirs = opensc_tool_responses(opensc_reader_index(reader), apdus)
    assert theirs == ours
    assert theirs == exchange_all(MemoryConnection(load_profile(profile)), apdus)  # the simulator's own bytes
    holder = json.loads((ROOT / f"fixtures/cards/{profile}.json").read_text(encoding="utf-8"))["holder"]
    assert len(theirs) == 17 and theirs[0][:1] == b"\x6f" and theirs[0][-2:] == b"\x90\x00"  # the FCI
    if holder_needs_authentication(profile):  # a third-generation card keeps EF06 from opensc-tool too
        assert theirs[10] == b"\x69\x82"
    else:
        assert theirs[10] == b"\x08\x12" + holder["social_security_number"].encode() + b"\x90\x00"  # EF06 record 1


def holder_needs_authentication(profile: str) -> bool:
    return json.loads((ROOT / f"fixtures/cards/{profile}.json").read_text(encoding="utf-8"))["algorithm"] == "SM4"


# --- end to end: the sscard CLI over pcscd, the card in an `sscard simulate` process -----------

def sscard(*args: str, input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from sscard.terminal.cli import main; main()", *args],
                          input=input, env=env, capture_output=True, text=True, timeout=60)


def test_another_program_reading_in_a_loop_and_sscard_read_share_the_reader(vpcd_card, tmp_path):
    """The hospital's software and this terminal on one counter PC: a second PC/SC client reads the
    card in a tight loop (each read a transaction) while `sscard read` runs 20 times. Every read of
    ours is right, and the other client's session is never reset under it."""
    vpcd_card("adult", process=True)
    expected = json.loads(sscard("read", "--json", "--reader", "sim:adult").stdout)
    stop = tmp_path / "stop"
    other = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sharing_client.py"), READER0, str(stop),
                              expected["social_security_number"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        ours = [sscard("read", "--json", "--reader", READER0) for _ in range(20)]
    finally:
        stop.touch()
        out, err = other.communicate(timeout=30)
    wrong = [(r.returncode, r.stderr.strip()) for r in ours if r.returncode != 0 or json.loads(r.stdout) != expected]
    assert wrong == [], wrong
    theirs = json.loads(out)
    assert theirs["resets"] == 0 and theirs["wrong"] == 0 and theirs["errors"] == [], (theirs, err)
    assert theirs["correct"] >= 20  # it read all along


class OtherProgram:
    """Another program's shared PC/SC session on a reader (pyscard's raw calls)."""

    def __init__(self, reader: str) -> None:
        _, self.context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        hresult, self.card, self.protocol = scard.SCardConnect(
            self.context, reader, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1)
        assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)

    def get_challenge(self) -> int:
        """The PC/SC result of one command on its session (SCARD_W_RESET_CARD once the card was reset)."""
        hresult, _ = scard.SCardTransmit(self.card, self.protocol, [0x00, 0x84, 0x00, 0x00, 0x08])
        return hresult & 0xFFFFFFFF

    def close(self, disposition: int = scard.SCARD_LEAVE_CARD) -> None:
        scard.SCardDisconnect(self.card, disposition)
        scard.SCardReleaseContext(self.context)


def test_a_reader_without_a_pin_pad_lists_no_feature_and_the_pin_is_asked_on_screen(vpcd_card):
    vpcd_card("adult")
    with pcsc.connect(READER0) as connection:
        assert connection.features() == {}  # vpcd's reader answers no part 10 feature request
        assert not SocialSecurityCard(connection).has_pin_pad()


def test_a_card_reset_by_another_program_between_two_operations_is_selected_again(vpcd_card):
    vpcd_card("adult")
    with pcsc.connect(READER0) as connection:
        card = SocialSecurityCard(connection)
        first = card.read_identity()
        OtherProgram(READER0).close(scard.SCARD_RESET_CARD)  # resets the card as it lets go
        assert card.read_identity() == first  # reconnected, the application selected again
        assert card.pin_tries_left() == 3


def test_letting_go_leaves_the_card_to_others_unless_a_pin_was_verified(vpcd_card):
    vpcd_card("adult", process=True)
    pin = json.loads((ROOT / "fixtures/cards/adult.json").read_text(encoding="utf-8"))["pin"]["value"]
    other = OtherProgram(READER0)
    try:
        assert sscard("read", "--reader", READER0).returncode == 0
        assert other.get_challenge() == scard.SCARD_S_SUCCESS  # its session went on under ours
        assert sscard("verify-pin", "--reader", READER0, "--pin-stdin", input="000000\n").returncode == 6
        assert other.get_challenge() == scard.SCARD_S_SUCCESS  # a wrong PIN raised nothing
        assert sscard("verify-pin", "--reader", READER0, "--pin-stdin", input=f"{pin}\n").returncode == 0
        # the verified PIN is not left to the next program: the card was reset as we let go
        assert other.get_challenge() == scard.SCARD_W_RESET_CARD & 0xFFFFFFFF
    finally:
        other.close()


def test_a_card_held_by_another_program_ends_within_the_card_timeout_with_a_message(vpcd_card):
    vpcd_card("adult")
    other = OtherProgram(READER0)
    assert scard.SCardBeginTransaction(other.card) == scard.SCARD_S_SUCCESS
    try:
        started = time.monotonic()
        result = sscard("--card-timeout", "2", "read", "--reader", READER0)
        took = time.monotonic() - started
    finally:
        scard.SCardEndTransaction(other.card, scard.SCARD_LEAVE_CARD)
        other.close()
    assert result.returncode == 4, result.stderr
    assert "another program may be holding it" in result.stderr and took < 10, (took, result.stderr)


@pytest.mark.parametrize("profile", ["adult", "minority", "other-region", "strict:adult"])  # 3.00 SM4; a strict T=0 chip
def test_e2e_read_over_pcscd_equals_in_memory(vpcd_card, profile):
    vpcd_card(profile, process=True)
    over_pcscd = sscard("read", "--json", "--reader", READER0)
    in_memory = sscard("read", "--json", "--reader", f"sim:{profile}")
    assert over_pcscd.returncode == 0, over_pcscd.stderr
    assert json.loads(over_pcscd.stdout) == json.loads(in_memory.stdout)


def test_e2e_read_bank_over_pcscd_equals_in_memory(vpcd_card):
    """The bank application over T=0 through pcscd: GET RESPONSE after SELECT and GET PROCESSING
    OPTIONS, READ RECORD by SFI; the same masked account as in memory."""
    vpcd_card("adult", process=True)
    over_pcscd = sscard("read", "--bank", "--json", "--reader", READER0)
    assert over_pcscd.returncode == 0, over_pcscd.stderr
    account = json.loads(over_pcscd.stdout)
    assert account == json.loads(sscard("read", "--bank", "--json", "--reader", "sim:adult").stdout)
    assert account["account_number"].startswith("621700*") and account["expiry"] == "2029-03"


def test_simulate_pulls_and_inserts_its_card_on_commands_from_standard_input(pcscd):
    """Windows has no SIGUSR1: the simulator takes 'pull', Enter (toggle) and 'quit' on stdin too."""
    wait_card(READER0, present=False)
    proc = subprocess.Popen([sys.executable, "-c", "from sscard.terminal.cli import main; main()", "simulate", "--card",
                             "adult", "--port", str(DEFAULT_PORT)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_card(READER0, present=True, timeout=15)
        for line, present in (("pull", False), ("", True), ("insert", True), ("toggle", False), ("insert", True)):
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            time.sleep(0.3)
            wait_card(READER0, present=present)
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=10) == 0
        assert "cards removed, simulator stopped" in proc.stderr.read()
    finally:
        proc.kill()
    wait_card(READER0, present=False)


def test_e2e_read_removed_mid_read_exit_4(vpcd_card):
    vpcd_card("adult", process=True, remove_after=5)
    result = sscard("read", "--reader", "0")
    assert result.returncode == 4, result.stderr
    assert "removed during the operation" in result.stderr and "Traceback" not in result.stderr


def test_e2e_verify_pin_blocked_over_pcscd_exit_7(vpcd_card):
    vpcd_card("blocked-pin", process=True)
    result = sscard("verify-pin", "--reader", READER0, "--pin-stdin", input="123456\n")
    assert result.returncode == 7, result.stderr
    assert "blocked" in result.stderr


def test_e2e_wrong_pin_counts_down_across_sessions_to_blocked(vpcd_card):
    """Each verify-pin is its own process and PC/SC session (the card powered down in between): the try
    counter is the card's persistent state, so three wrong PINs block it and the right one is then refused."""
    vpcd_card("adult", process=True)
    pin = json.loads((ROOT / "fixtures/cards/adult.json").read_text(encoding="utf-8"))["pin"]["value"]
    wrong = "000000" if pin != "000000" else "111111"
    runs = [sscard("verify-pin", "--reader", READER0, input=attempt + "\n") for attempt in (wrong, wrong, wrong, pin)]
    assert [r.returncode for r in runs] == [6, 6, 7, 7], [r.stderr for r in runs]
    assert "Wrong PIN: 2 tries left" in runs[0].stderr
    assert "Wrong PIN: 1 try left" in runs[1].stderr
    assert all("blocked" in r.stderr and "bank counter" in r.stderr for r in runs[2:]), [r.stderr for r in runs[2:]]
    assert all("PIN correct" not in r.stdout and "Traceback" not in r.stderr for r in runs)
    assert all(pin not in r.stdout + r.stderr and wrong not in r.stdout + r.stderr for r in runs)


# --- watch's bookkeeping (no pcscd needed) ----------------------------------------------------

def status(name: str, atr: bytes | None, events: int = 0, mute: bool = False) -> pcsc.ReaderStatus:
    return pcsc.ReaderStatus(name, atr is not None or mute, atr, mute=mute, events=events)


def kinds(events) -> list[tuple[str, str]]:
    return [(e.kind, e.reader) for e in events]


def test_diff_first_look_reports_present_then_changes():
    known: dict = {}
    assert kinds(pcsc._diff(known, [status("A", b"\x3b\x00"), status("B", None)], True, True)) == [("present", "A")]
    assert kinds(pcsc._diff(known, [status("A", None), status("B", b"\x3b\x01")], False, True)) == [
        ("removed", "A"), ("inserted", "B")]
    assert pcsc._diff(known, [status("A", None), status("B", b"\x3b\x01")], False, True) == []


def test_diff_swap_between_two_looks_is_removed_then_inserted():
    known: dict = {}
    pcsc._diff(known, [status("A", b"\x3b\x00", events=1)], False, True)
    assert kinds(pcsc._diff(known, [status("A", b"\x3b\x00", events=3)], False, True)) == [
        ("removed", "A"), ("inserted", "A")]
    # after a pcscd restart the counters start again: only the ATR counts
    assert pcsc._diff(known, [status("A", b"\x3b\x00", events=1)], False, False) == []


def test_diff_unplugged_reader_with_card_is_removed_and_mute_card_waits():
    known: dict = {}
    pcsc._diff(known, [status("A", b"\x3b\x00"), status("B", None)], False, True)
    assert kinds(pcsc._diff(known, [status("B", None, mute=True)], False, True)) == [("removed", "A")]
    assert kinds(pcsc._diff(known, [status("B", b"\x3b\x02")], False, True)) == [("inserted", "B")]


@pytest.mark.parametrize("spec, atr", [("3B8F80", b"\x3b\x8f\x80"), ("3b 8f 80", b"\x3b\x8f\x80"),
                                       ("3B:8F:80", b"\x3b\x8f\x80"), ("3F 96", b"\x3f\x96"),
                                       ("Virtual", None), ("0", None), ("3B8", None), ("3B", None),
                                       ("00 01", None), ("00 00", None), ("0001", None), ("8F 80", None)])
def test_parse_atr(spec, atr):
    assert pcsc.parse_atr(spec) == atr


def test_the_reader_state_layouts_are_the_platforms():
    """drivers/readerstate.py: pcsc-lite's SCARD_READERSTATE (checked against pcscd above) and the
    Windows SDK's SCARD_READERSTATEW on a 64-bit build (offsets from winscard.h; the call on paper)."""
    from sscard.drivers.readerstate import needs_native, reader_state_type

    windows = reader_state_type("win32")
    assert [(name, getattr(windows, name).offset) for name, _ in windows._fields_] == [
        ("szReader", 0), ("pvUserData", 8), ("dwCurrentState", 16), ("dwEventState", 20), ("cbAtr", 24), ("rgbAtr", 28)]
    assert ctypes.sizeof(windows) == 64
    linux = reader_state_type("linux")
    assert linux.rgbAtr.size == 33 and linux.dwEventState.offset == 24
    with pytest.raises(ReaderError, match="not supported on macOS"):
        reader_state_type("darwin")
    assert needs_native(["Virtual PCD 00 00", "德卡 T10 [社保卡] 00 00"]) and not needs_native(["Virtual PCD 00 00"])
