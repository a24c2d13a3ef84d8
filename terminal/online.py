"""The terminal online: calls to the platform, journaled when they move money, reversed when lost.

docs/platform.md, "Online first" and "The journal". The platform owns persons, accounts and
settlements; a counter flow asks it while the holder waits:

- a **query** (1101 person information, 2101/2206 pre-settlement) is one signed call; nothing to
  journal, nothing to undo;
- a **transaction** that moves money or creates what money hangs on (2102/2207 settlements, their
  cancellations 2103/2208, 2201/2401 visits and their cancellations, SS02 the old card's account) is
  journaled first (:meth:`terminal.queue.Outbox.begin_call`: the intent, with its msgid, on disk
  before a byte is sent), then sent, then its answer journaled. A call whose answer never comes (a
  timeout, a dropped connection, a 5xx, garbage) is **reversed** with a 2601 naming its msgid, at once
  and never by sending it again; should the reversal fail too, the entry stays *unknown* and the next
  online command (or ``sscard queue resolve``) reverses it first (:meth:`Platform.resolve`). A request
  that certainly never reached the platform (connection refused) is void: nothing to undo.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from sscard.apdu.errors import SSCardError
from sscard.message.envelope import Credentials, Envelope, MessageError, parse_yuan, signed_wire
from sscard.message.infno import REVERSIBLE, SETTLEMENTS, Infno, clerk_word, label
from sscard.terminal.queue import ANSWERED, CALLING, REVERSED, VOID, Outbox, QueuedRecord, QueueError, record_data
from sscard.terminal.upload import (
    DEFAULT_TIMEOUT,
    CentralClient,
    CentralError,
    CentralProtocolError,
    Session,
    fresh_msgid,
)

log = logging.getLogger(__name__)


class PlatformRefusedError(SSCardError):
    """The platform refused the transaction (infcode < 0); nothing was done there."""

    def __init__(self, infno: str, reason: str) -> None:
        self.infno = infno
        self.reason = reason.strip().rstrip(".") or "no reason given"
        super().__init__(f"The platform refused the {label(infno)}: {self.reason}.")


class ReversedError(CentralError):
    """The platform's answer was lost, and the call was reversed: nothing was done."""


class OutcomeUnknownError(SSCardError):
    """The platform's answer was lost and the reversal could not be made yet: the outcome is unknown
    until the journal resolves it (the next online command, or ``sscard queue resolve``)."""


def again(infno: str) -> str:
    """What to do after a call of ``infno`` was reversed: a sale can be paid another way."""
    return "Try again, or take another way to pay." if infno in SETTLEMENTS else "Try again."


def describe(record: QueuedRecord) -> str:
    """``the purchase for sale T0001 (H3303...)``: a journal entry in a clerk's words."""
    data = record_data(record)
    what = clerk_word(record.infno)
    about = (f" for sale {data['chrg_bchno']}" if isinstance(data.get("chrg_bchno"), str)
             else f" of settlement {data['setl_id']}" if isinstance(data.get("setl_id"), str)
             else f" of visit {data['mdtrt_id']}" if isinstance(data.get("mdtrt_id"), str) else "")
    return f"the {what}{about} ({record.msgid})"


@dataclass(frozen=True)
class Resolution:
    """What resolving one unknown journal entry did (``reversed`` or ``void``), in a clerk's words."""

    record: QueuedRecord
    state: str
    text: str


class Platform:
    """This terminal's online session with the platform at ``url``: its journal is ``outbox`` (the same
    SQLite file as the queue), its gateway ``credentials``. Signs in (9001) before its first call.

    Each call must be over within ``timeout`` seconds (:class:`terminal.upload.CentralClient`); a
    journaled call is this process's for ``lease`` seconds (default: six timeouts and 5 s, at least
    30 s: the call, and on a 401 the sign-in's calls and the call again), after which, or once this
    process is gone, another may resolve it; the journal then refuses this process's late answer.
    """

    def __init__(self, outbox: Outbox, url: str, credentials: Credentials, *, timeout: float = DEFAULT_TIMEOUT,
                 lease: float | None = None, client: httpx.Client | None = None) -> None:
        self.outbox = outbox
        self.central = CentralClient(url, credentials=credentials, timeout=timeout, client=client)
        self.session = Session(self.central, outbox)
        self.lease = lease if lease is not None else max(30.0, 6 * timeout + 5)

    @property
    def url(self) -> str:
        return self.central.url

    def close(self) -> None:
        self.central.close()

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calls --------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any] | str) -> dict[str, Any]:
        """One message (a dict, or a stored envelope's wire text) under this session's sign-in."""
        def call(sign_no: str) -> dict[str, Any]:
            signed = signed_wire(message, sign_no) if isinstance(message, str) else {**message, "sign_no": sign_no}
            return self.central.call(signed)

        return self.session.run(call)

    def query(self, infno: str, input: dict[str, Any], *, insured_region: str) -> dict[str, Any]:
        """A call that moves nothing (1101, 2101, 2206...): its ``output``. :class:`PlatformRefusedError`
        when refused; :class:`CentralError` when it cannot be asked."""
        station = self.outbox.require_station()

        def attempt() -> dict[str, Any]:
            try:
                envelope = Envelope(infno, self.outbox.next_msgid(), station, station.operator, insured_region,
                                    self.outbox.clock(), input)
            except MessageError as err:
                raise CentralProtocolError(f"The {label(infno)} cannot be sent: {err}") from None
            return self._send(envelope.to_dict())

        response = fresh_msgid(attempt)
        if response["infcode"] != 0:
            raise PlatformRefusedError(infno, str(response.get("err_msg") or "")[:300])
        output = response.get("output")
        if not isinstance(output, dict):
            raise CentralProtocolError(f"The platform answered the {label(infno)} without its output")
        return output

    def transact(self, infno: str, input: dict[str, Any], *, insured_region: str, card_sn: str | None = None,
                 check: Callable[[dict[str, Any]], object] | None = None) -> tuple[QueuedRecord, dict[str, Any]]:
        """A journaled call (module docstring): (the journal entry, the answer's ``output``).

        ``check`` validates an accepted answer's output before it is journaled (raise ``ValueError``,
        ``KeyError`` or ``TypeError`` for one the terminal cannot use: it is then reversed, as a lost one).
        Raises :class:`PlatformRefusedError` (refused, nothing done), :class:`ReversedError` (no usable
        answer, reversed: nothing done), :class:`OutcomeUnknownError` (no answer and no reversal yet, or
        the answer came after another process took the call over), :class:`CentralError` with nothing
        done when the platform cannot be reached at all (the sign-in comes first: nothing is journaled).
        """
        if infno not in REVERSIBLE:
            raise ValueError(f"{infno} is not a journaled transaction")
        self.session.signed()
        record = self.outbox.begin_call(infno, input, insured_region=insured_region, card_sn=card_sn,
                                        lease=self.lease)
        try:
            response = self._send(record.envelope)
            output = response.get("output")
            if response["infcode"] == 0:
                if not isinstance(output, dict):
                    raise CentralProtocolError("the accepted answer has no output")
                if check is not None:
                    try:
                        check(output)
                    except (ValueError, KeyError, TypeError, MessageError) as err:
                        raise CentralProtocolError(f"the accepted answer cannot be used ({err})") from None
        except CentralError as err:
            if not err.maybe_processed:
                self.outbox.end_call(record.msgid, VOID, f"never reached the platform: {err}")
                raise
            self.outbox.note_call(record.msgid, str(err), lease=self.lease)
            self._reverse_lost(record, err)
        try:
            record = self.outbox.answer_call(record.msgid, response, record)
        except QueueError as err:
            raise self._unrecorded(record, err) from None
        if response["infcode"] != 0 or not isinstance(output, dict):
            raise PlatformRefusedError(infno, str(response.get("err_msg") or "")[:300])
        return record, output

    def _unrecorded(self, record: QueuedRecord, err: QueueError) -> SSCardError:
        """The platform answered, but the journal did not take the answer: another process took the call
        over (this one's lease ran out), or the file failed. Either way the entry stays unknown and is
        reversed; the clerk must not act on the answer."""
        current = self.outbox.state_of(record.msgid)
        if current == CALLING or current is None:
            return OutcomeUnknownError(
                f"The platform answered {describe(record)}, but this terminal could not record the answer ({err}). "
                "Do not hand anything over on it: the next command, or 'sscard queue resolve', reverses it.")
        return OutcomeUnknownError(
            f"The platform's answer to {describe(record)} came after another command of this terminal took the "
            f"call over (it is now {current}). Do not hand anything over on it; 'sscard queue list' shows it.")

    # --- reversal -----------------------------------------------------------------------------------

    def _reverse_lost(self, record: QueuedRecord, cause: CentralError) -> None:
        """The answer to ``record`` was lost: reverse it now. Always raises: :class:`ReversedError`
        when the reversal holds, :class:`OutcomeUnknownError` when it could not be made."""
        what = describe(record)
        try:
            self.reverse(record)
        except (CentralError, PlatformRefusedError) as err:
            self.outbox.note_call(record.msgid, f"{cause}; the reversal failed: {err}", lease=0)
            raise OutcomeUnknownError(
                f"The platform's answer to {what} was lost ({cause}), and it could not be reversed yet ({err}). "
                "Its outcome is unknown: do not hand anything over on it. The next command, or "
                "'sscard queue resolve', resolves it once the platform answers.") from None
        raise ReversedError(f"The platform's answer to {what} was lost ({cause}): it was reversed, nothing was "
                            f"done. {again(record.infno)}")

    def reverse(self, record: QueuedRecord) -> str:
        """2601 for ``record`` (a journaled call with no answer), itself journaled; the original ends
        ``reversed``. Returns the platform's ``rvs_rslt`` (``reversed``, ``nothing_to_undo``,
        ``already_reversed``; convention). Raises :class:`CentralError` or :class:`PlatformRefusedError`,
        and the original stays unknown."""
        psn_no = record_data(record).get("psn_no")
        body = {"data": {"psn_no": psn_no if isinstance(psn_no, str) else "", "omsgid": record.msgid,
                         "oinfno": record.infno}}
        self.session.signed()
        reversal = self.outbox.begin_call(Infno.REVERSAL, body, insured_region=record.insured_region, card_sn=record.card_sn,
                                          lease=self.lease)
        try:
            response = self._send(reversal.envelope)
        except CentralError as err:
            self.outbox.end_call(reversal.msgid, VOID, f"no answer: {err}")
            raise
        self.outbox.answer_call(reversal.msgid, response, reversal)
        if response["infcode"] != 0:
            raise PlatformRefusedError(Infno.REVERSAL, str(response.get("err_msg") or "")[:300])
        output = response.get("output")
        result = str((output if isinstance(output, dict) else {}).get("rvs_rslt") or "reversed")
        if not self.outbox.end_call(record.msgid, REVERSED, f"reversed by {reversal.msgid} ({result})", response):
            raise CentralError(f"{describe(record)} was reversed ({reversal.msgid}), but another command of this "
                               f"terminal changed its journal entry meanwhile (now {self.outbox.state_of(record.msgid)})")
        log.info("reversed %s by %s: %s", record.msgid, reversal.msgid, result)
        return result

    def confirm(self, record: QueuedRecord) -> QueuedRecord:
        """The platform's own record of ``record``, for an unknown entry whose reversal the platform
        refused because the transaction stands and cannot be undone (a refund whose money was spent):
        the same message is sent again, under the same msgid, and the platform answers a repeat of an
        accepted message with its first answer, doing nothing twice. The entry ends ``answered``.
        :class:`PlatformRefusedError` when the platform answers anything but an acceptance."""
        response = self._send(record.envelope)
        if response["infcode"] != 0:
            raise PlatformRefusedError(record.infno, str(response.get("err_msg") or "")[:300])
        return self.outbox.answer_call(record.msgid, response, record)

    def resolve(self) -> list[Resolution]:
        """Resolve the unknown journal entries (docs/platform.md, "The journal"), oldest first: each is
        reversed with a 2601; one the platform will not reverse, because it happened and cannot be
        undone, is confirmed instead (:meth:`confirm`: it stands); a reversal left unknown is set aside
        once its original is resolved. An entry that cannot be resolved now is handed back (unknown, for
        the next command) and the next one is tried; a platform that cannot be reached stops it
        (:class:`CentralError`: the rest stay unknown)."""
        done: list[Resolution] = []
        unknown = self.outbox.unknown_calls()
        for record in [r for r in unknown if r.infno != Infno.REVERSAL]:
            if not self.outbox.claim_unknown(record.msgid, self.lease):
                continue  # another process is on it
            what = describe(record)
            try:
                result = self.reverse(record)
            except PlatformRefusedError as refused:
                try:
                    self.confirm(record)
                except (CentralError, PlatformRefusedError, QueueError) as err:
                    self.outbox.note_call(record.msgid, f"not reversed ({refused.reason}), not confirmed ({err})",
                                          lease=0)
                    log.warning("%s stays unknown: %s; %s", record.msgid, refused.reason, err)
                    continue
                done.append(Resolution(record, ANSWERED, f"The outcome of {what} was unknown: it stands (the "
                                                         f"platform could not undo it: {refused.reason})."))
                continue
            except CentralError as err:
                self.outbox.note_call(record.msgid, f"the reversal failed: {err}", lease=0)
                raise
            words = {"nothing_to_undo": "it never reached the platform, and now it never will",
                     "already_reversed": "it had been reversed already"}.get(result, "reversed")
            done.append(Resolution(record, REVERSED, f"The outcome of {what} was unknown: {words}; "
                                                     "nothing of it stands."))
        for record in [r for r in unknown if r.infno == Infno.REVERSAL]:
            if self.outbox.claim_unknown(record.msgid, self.lease):
                self.outbox.end_call(record.msgid, VOID, "a reversal with no answer: superseded")
                done.append(Resolution(record, VOID, f"A reversal without an answer ({record.msgid}) was set aside: "
                                                     "its original was resolved."))
        return done


def yuan_field(output: dict[str, Any], key: str) -> int:
    """An amount of an answer's output in fen (ValueError on anything but yuan with two decimals)."""
    try:
        return int(parse_yuan(output[key]))
    except MessageError as err:
        raise ValueError(f"{key}: {err}") from None


# --- what 1101 says about a person -------------------------------------------------------------------

@dataclass(frozen=True)
class Insurance:
    """One insurance of a person (1101 ``insuinfo``): its type, whether in force, the account balance."""

    insutype: str
    psn_type: str
    in_force: bool
    balance: int
    insured_region: str
    suspended_since: str | None


@dataclass(frozen=True)
class Person:
    """The platform's person (1101 ``baseinfo`` and ``insuinfo``): the psn_no every later message names."""

    psn_no: str
    name: str
    certno: str
    insurances: tuple[Insurance, ...]

    @property
    def insured_region(self) -> str:
        """Where the person is insured (``insuplc_admdvs`` of every later envelope)."""
        return self.insurances[0].insured_region if self.insurances else ""

    @property
    def balance(self) -> int:
        """The personal account balance in fen (the largest ``balc`` the platform gave: one account)."""
        return max((i.balance for i in self.insurances), default=0)

    def insurance(self, *preferred: str) -> Insurance | None:
        """The first insurance in force among ``preferred`` insutypes (any in force when none given)."""
        in_force = [i for i in self.insurances if i.in_force]
        for insutype in preferred:
            for insurance in in_force:
                if insurance.insutype == insutype:
                    return insurance
        return None if preferred else (in_force[0] if in_force else None)

    @classmethod
    def from_1101(cls, output: dict[str, Any]) -> Person:
        """Parse a 1101 answer; :class:`CentralProtocolError` when it is not of the documented shape."""
        try:
            base = output["baseinfo"]
            insurances = tuple(
                Insurance(str(i["insutype"]), str(i.get("psn_type") or ""), i.get("psn_insu_stas") == "1",
                          yuan_field(i, "balc"), str(i["insuplc_admdvs"]), i.get("paus_insu_date"))
                for i in output.get("insuinfo") or [])
            person = cls(str(base["psn_no"]), str(base["psn_name"]), str(base["certno"]), insurances)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CentralProtocolError(f"The platform's person information (1101) is not of the documented shape "
                                       f"({type(err).__name__}: {err})") from None
        if not person.psn_no:
            raise CentralProtocolError("The platform's person information (1101) has no psn_no")
        return person
