"""Key stores (terminal/keystore.py): the key file and its permissions, the bundled TEST keys, the PSAM;
the software store and the PSAM compute the same bytes for every key, card and algorithm."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from sscard.apdu import commands
from sscard.apdu.crypto import Algorithm
from sscard.apdu.keyset import KeyUsage
from sscard.drivers.errors import CardRemovedError
from sscard.drivers.memory import MemoryConnection
from sscard.drivers.simulator import load_card
from sscard.terminal.cli.exits import exit_code
from sscard.terminal.errors import KeyStoreError
from sscard.terminal.keystore import CardKeyRef, PSAMKeyStore, SoftwareKeyStore, open_key_store

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "fixtures" / "keys" / "test-keys.json"
KEY_HEX = [k.lower() for keys in json.loads(BUNDLED.read_text())["master_keys"].values() for k in keys.values()]
CARDS = ("330300D15600000501234567FFFFFFFF", "440300D15600000576543210FFFFFFFF")


def private_copy(tmp_path: Path, text: str | None = None, mode: int = 0o600) -> Path:
    """The bundled key file (git keeps it 0644) copied to tmp_path with ``mode``."""
    path = tmp_path / "keys.json"
    if text is None:
        shutil.copyfile(BUNDLED, path)
    else:
        path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_readable_by_owner_only_loads(tmp_path):
    store = SoftwareKeyStore.from_file(private_copy(tmp_path))
    assert store.test_only and "keys.json" in store.description


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_key_file_readable_or_writable_by_others_is_refused(tmp_path, mode):
    path = private_copy(tmp_path, mode=mode)
    with pytest.raises(KeyStoreError) as err:
        SoftwareKeyStore.from_file(path)
    assert f"mode {mode:04o}" in str(err.value) and "chmod 600" in str(err.value)
    assert exit_code(err.value) == 12


def test_the_bundled_file_itself_is_refused_when_git_left_it_0644(tmp_path):
    path = tmp_path / "as-checked-out.json"
    shutil.copyfile(BUNDLED, path)
    path.chmod(0o644)  # what git gives every clone
    with pytest.raises(KeyStoreError, match="other users"):
        SoftwareKeyStore.from_file(path)


def test_symlink_and_directory_and_missing_file_are_refused(tmp_path):
    target = private_copy(tmp_path)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    with pytest.raises(KeyStoreError, match="is a symbolic link: refused") as err:
        SoftwareKeyStore.from_file(link)
    assert "levels of symbolic links" not in str(err.value)  # not the bare ELOOP strerror
    with pytest.raises(KeyStoreError, match="Cannot open"):
        SoftwareKeyStore.from_file(tmp_path / "none.json")
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyStoreError):
        SoftwareKeyStore.from_file(folder)


OTHER_UID = 54321  # a uid that is not the test's (tests run as root in CI; chown needs it)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@needs_root
def test_key_file_of_another_user_is_refused_even_mode_600(tmp_path):
    path = private_copy(tmp_path)
    os.chown(path, OTHER_UID, -1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyStoreError, match=f"belongs to another user \\(uid {OTHER_UID}\\)") as err:
        SoftwareKeyStore.from_file(path)
    assert exit_code(err.value) == 12


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o730, 0o1777], ids=lambda m: f"{m:04o}")
def test_key_file_in_a_folder_others_can_write_is_refused(tmp_path, mode):
    folder = tmp_path / "keys"
    folder.mkdir()
    path = private_copy(folder)
    folder.chmod(mode)  # the file is 600, but whoever writes the folder can put another file there
    with pytest.raises(KeyStoreError, match="can be written by other users") as err:
        SoftwareKeyStore.from_file(path)
    assert f"mode {mode:04o}" in str(err.value)
    # a shared sticky folder (like /tmp) is not to be chmod-ed: the clerk is told to move the file
    remedy = "folder of its own" if mode & stat.S_ISVTX else f"chmod go-w {folder}"
    assert remedy in str(err.value)
    assert exit_code(err.value) == 12
    folder.chmod(0o755)  # others may list and read the folder, not write it
    assert SoftwareKeyStore.from_file(path).test_only


def test_key_file_below_a_folder_others_can_write_is_refused(tmp_path):
    above = tmp_path / "shared"
    folder = above / "keys"
    folder.mkdir(parents=True)
    path = private_copy(folder)
    above.chmod(0o777)  # others can rename "keys" away and put their own folder in its place
    with pytest.raises(KeyStoreError, match=f"folder {above} .*can be written by other users"):
        SoftwareKeyStore.from_file(path)
    above.chmod(0o1777)  # sticky, like /tmp: only the owner may rename "keys"
    assert SoftwareKeyStore.from_file(path).test_only


@needs_root
def test_key_file_in_a_folder_of_another_user_is_refused(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    path = private_copy(folder)
    os.chown(folder, OTHER_UID, -1)
    with pytest.raises(KeyStoreError, match=f"folder {folder} .*belongs to another user"):
        SoftwareKeyStore.from_file(path)


def test_a_symlinked_folder_is_checked_where_it_really_is(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    private_copy(real)
    link = tmp_path / "via-link"
    link.symlink_to(real, target_is_directory=True)
    assert SoftwareKeyStore.from_file(link / "keys.json").test_only  # a private folder through a link
    real.chmod(0o777)  # the link itself is 0777 always; the folder it leads to is what counts
    with pytest.raises(KeyStoreError, match=f"folder {real} .*can be written by other users"):
        SoftwareKeyStore.from_file(link / "keys.json")


def test_a_symlinked_folder_whose_link_others_can_repoint_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    private_copy(real)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keys").symlink_to(real, target_is_directory=True)
    shared.chmod(0o777)  # the real folder is private, but anyone can point "keys" elsewhere
    with pytest.raises(KeyStoreError, match=f"folder {shared} .*can be written by other users"):
        SoftwareKeyStore.from_file(shared / "keys" / "keys.json")


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "keys.json"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            SoftwareKeyStore.from_file(fifo)
        except BaseException as err:
            outcome.append(err)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # blocked in open(): a writer releases it, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("from_file blocked on a FIFO waiting for a writer")
    assert len(outcome) == 1 and isinstance(outcome[0], KeyStoreError)
    assert "not a regular file" in str(outcome[0])


def test_a_relative_key_file_when_the_working_folder_is_gone_is_a_key_store_error(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(KeyStoreError, match="key file keys.json") as err:
        SoftwareKeyStore.from_file("keys.json")
    assert exit_code(err.value) == 12


def mutated(change) -> str:
    data = json.loads(BUNDLED.read_text())
    change(data)
    return json.dumps(data)


@pytest.mark.parametrize("text,words", [
    ("{", "not valid JSON"),
    (mutated(lambda d: d.update(kind="ssc")), "not a master key file"),
    (mutated(lambda d: d.update(test_only="yes")), "test_only"),
    (mutated(lambda d: d["master_keys"]["3DES"].update(internal_auth="ABCD")), "3DES.internal_auth: must be 32 hex"),
    (mutated(lambda d: d["master_keys"]["3DES"].pop("pin_reload")), "3DES.pin_reload: missing"),
    (mutated(lambda d: d["master_keys"]["SM4"].update(extra="00" * 16)), "unknown key usage"),
    (mutated(lambda d: d["master_keys"].update(AES={})), "unknown algorithm"),
    (mutated(lambda d: d["master_keys"]["3DES"].update(external_auth="0123456789ABCDEF" * 2)), "halves"),
])
def test_malformed_key_files_are_refused_without_echoing_keys(tmp_path, text, words):
    with pytest.raises(KeyStoreError) as err:
        SoftwareKeyStore.from_file(private_copy(tmp_path, text))
    message = str(err.value).lower()
    assert words.lower() in message
    for secret in KEY_HEX + ["0123456789abcdef"]:
        assert secret not in message


def test_a_store_without_the_sm4_keys_says_which_key_is_missing(tmp_path):
    path = private_copy(tmp_path, mutated(lambda d: d["master_keys"].pop("SM4")))
    store = SoftwareKeyStore.from_file(path)
    ref = CardKeyRef.for_card(CARDS[1], "3.00")
    with pytest.raises(KeyStoreError, match="no SM4 internal_auth key"):
        store.encrypt(KeyUsage.INTERNAL_AUTH, ref, bytes(16))


def test_bundled_test_keys_are_flagged_test_only():
    store = SoftwareKeyStore.bundled_test_keys()
    assert store.test_only and "TEST" in store.description
    for key in KEY_HEX:
        assert key not in repr(store).lower()


def test_a_production_key_file_is_not_test_only(tmp_path):
    store = SoftwareKeyStore.from_file(private_copy(tmp_path, mutated(lambda d: d.update(test_only=False))))
    assert not store.test_only


def test_keys_are_used_only_for_their_purpose():
    store = SoftwareKeyStore.bundled_test_keys()
    ref = CardKeyRef.for_card(CARDS[0], "2.00")
    with pytest.raises(KeyStoreError, match="cannot be used to MAC"):
        store.mac(KeyUsage.INTERNAL_AUTH, ref, bytes(8), b"data")
    with pytest.raises(KeyStoreError, match="cannot be used to encrypt"):
        store.encrypt(KeyUsage.PIN_RELOAD, ref, bytes(8))


@pytest.mark.parametrize("code", CARDS)
@pytest.mark.parametrize("version", ["2.00", "3.00"])
def test_software_store_and_psam_compute_the_same_bytes(code, version):
    software = SoftwareKeyStore.bundled_test_keys()
    psam = PSAMKeyStore(MemoryConnection(load_card("psam"), name="sim:psam"))
    ref = CardKeyRef.for_card(code, version)
    block = ref.algorithm.block_size
    data = os.urandom(block)
    for usage in (KeyUsage.INTERNAL_AUTH, KeyUsage.EXTERNAL_AUTH):
        assert psam.encrypt(usage, ref, data) == software.encrypt(usage, ref, data)
    message = commands.application_unblock_mac_input()
    for usage in (KeyUsage.PIN_RELOAD, KeyUsage.APP_MAINTENANCE):
        assert psam.mac(usage, ref, data, message) == software.mac(usage, ref, data, message)
    assert len(software.mac(KeyUsage.PIN_RELOAD, ref, data, message)) == 4
    assert software.encrypt(KeyUsage.INTERNAL_AUTH, ref, data) != software.encrypt(KeyUsage.EXTERNAL_AUTH, ref, data)


def test_psam_refusal_is_a_key_store_error():
    # an SSC in the PSAM slot: it does not know DES INIT
    store = PSAMKeyStore(MemoryConnection(load_card("adult"), name="sim:adult"))
    with pytest.raises(KeyStoreError, match=r"PSAM refused DES INIT .*SW 6D00.*right PSAM"):
        store.encrypt(KeyUsage.INTERNAL_AUTH, CardKeyRef.for_card(CARDS[0], "2.00"), bytes(8))


def test_psam_removed_is_card_removed():
    conn = MemoryConnection(load_card("psam"), name="sim:psam")
    conn.remove()
    with pytest.raises(CardRemovedError):
        PSAMKeyStore(conn).encrypt(KeyUsage.INTERNAL_AUTH, CardKeyRef.for_card(CARDS[0], "2.00"), bytes(8))


def test_open_key_store_chooses(tmp_path):
    with open_key_store() as store:
        assert isinstance(store, SoftwareKeyStore) and store.test_only
    with open_key_store(key_file=private_copy(tmp_path)) as store:
        assert isinstance(store, SoftwareKeyStore) and "keys.json" in store.description
    with open_key_store(psam="sim:psam") as store:
        assert isinstance(store, PSAMKeyStore) and store.description == "PSAM in sim:psam"
    assert not store.connection.card.powered  # closed: the PSAM is powered down
    with pytest.raises(KeyStoreError, match="Choose one key store"):
        with open_key_store(psam="sim:psam", key_file=tmp_path / "k.json"):
            pass


def test_card_key_ref_hides_the_identification_code():
    ref = CardKeyRef.for_card(CARDS[0], "2.00")
    assert ref.algorithm is Algorithm.TDES and ref.diversification == bytes.fromhex("3303000501234567")
    assert "3303000501234567" not in repr(ref).upper()
    sm4 = CardKeyRef.for_card(CARDS[1], "3.00")  # the same 8-byte D for SM4 (docs/crypto.md)
    assert sm4.algorithm is Algorithm.SM4 and sm4.diversification == bytes.fromhex("4403000576543210")


def test_a_psam_reset_by_another_program_is_reconnected_and_asked_again_once():
    from sscard.drivers.errors import CardResetError

    class SharedPSAM(MemoryConnection):
        """A PSAM another program resets (once, or always)."""

        def __init__(self, resets: int) -> None:
            super().__init__(load_card("psam"))
            self.resets, self.reconnects, self.transactions = resets, 0, 0

        def _begin_transaction(self) -> None:
            self.transactions += 1
            if self.resets:
                self.resets -= 1
                raise CardResetError()

        def reconnect(self) -> None:
            self.reconnects += 1
            super().reconnect()

    ref = CardKeyRef.for_card(CARDS[0], "2.00")
    expected = SoftwareKeyStore.bundled_test_keys().encrypt(KeyUsage.INTERNAL_AUTH, ref, bytes(8))
    once = SharedPSAM(resets=1)
    assert PSAMKeyStore(once).encrypt(KeyUsage.INTERNAL_AUTH, ref, bytes(8)) == expected
    assert (once.reconnects, once.transactions) == (1, 2)  # DES INIT and DES CRYPT in one transaction
    always = SharedPSAM(resets=10)
    with pytest.raises(KeyStoreError, match="keeps being reset"):
        PSAMKeyStore(always).encrypt(KeyUsage.INTERNAL_AUTH, ref, bytes(8))
