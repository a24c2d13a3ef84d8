"""The hospital desk: registration, its cancellation, the outpatient bill and its refund (docs/flows.md).

**Registration**: card in -> genuine-card check -> PIN when the site requires it -> 1101 for the
card's holder -> a card not yet activated is activated by its first registration (an ``SS01``
record, queued: the agency's record) -> the registration asked online: 2201 (outpatient, maternity)
or 2401 (hospitalisation), journaled, answered with the visit's ``mdtrt_id``. With the platform
unreachable, the registration waits in the queue with the card's credential and goes up later. A
card issued in another region is flagged cross-region (insured region and treatment region in the
envelope). Codes: docs/flows.md, "Registration codes".

**Cancellation** (2202, 2404) of a visit registered here with no settlement standing.

**The outpatient bill** of a visit registered here: the card (the visit's holder), 2203 the visit's
medical type, 2205 and 2204 the bill's fee details (cleared and uploaded again, so a retry after a lost
answer uploads each line once), then the settlement as at the pharmacy (2206 preview, PIN, 2207
journaled: :func:`terminal.flows.settlement.settle`), and its refund (2208).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sscard.drivers.connection import Connection
from sscard.message.envelope import yuan
from sscard.message.infno import VISIT_CANCELLATIONS, Infno
from sscard.terminal.card import Identity, holder
from sscard.terminal.flows.common import (
    Clerk,
    PaymentRefusedError,
    RefusedError,
    Site,
    activation,
    holder_line,
    insurances_line,
    is_active,
    look_up,
    person_fields,
    present_card,
    timestamp,
    verify_holder_pin,
)
from sscard.terminal.flows.settlement import (
    Item,
    Refund,
    Split,
    bill_number,
    bill_total,
    platform_errors,
    refund as refund_bill,
    settle,
    standing,
)
from sscard.terminal.online import Person, PlatformRefusedError
from sscard.terminal.queue import ANSWERED, CALLING, SENT, QueuedRecord, record_data
from sscard.terminal.upload import CentralError

#: where each registration's answer names its visit
VISIT_PATHS = ("$.output.data.mdtrt_id", "$.output.result.mdtrt_id")
#: the confirmation a maternity registration for a male holder records
MALE_MATERNITY = "maternity registration for a male holder"


@dataclass(frozen=True)
class RegistrationKind:
    """One kind of registration: its transaction, medical type and the insurance types that pay it
    (the first is the one a registration queued offline names)."""

    name: str
    label: str
    infno: str
    med_type: str
    insutypes: tuple[str, ...]

    @property
    def insutype(self) -> str:
        return self.insutypes[0]


#: docs/flows.md, "Registration codes"
KINDS: dict[str, RegistrationKind] = {
    kind.name: kind
    for kind in (
        RegistrationKind("outpatient", "门诊 outpatient", Infno.REGISTRATION, "11", ("310", "390")),
        RegistrationKind("hospitalisation", "住院 hospitalisation", Infno.ADMISSION, "21", ("310", "390")),
        RegistrationKind("maternity", "生育 maternity", Infno.REGISTRATION, "51", ("510",)),
    )
}


def visit_id(output: dict[str, Any]) -> str:
    """The ``mdtrt_id`` of a registration's answer (2201: ``data``, 2401: ``result``); KeyError when none."""
    part = output.get("data")
    if not isinstance(part, dict):
        part = output["result"]
    mdtrt_id = part["mdtrt_id"]
    if not isinstance(mdtrt_id, str) or not mdtrt_id:
        raise ValueError("no mdtrt_id")
    return mdtrt_id


@dataclass(frozen=True)
class Registration:
    """What the desk did: the registration (answered online with its visit, or queued), and the
    activation when this was the card's first registration."""

    kind: RegistrationKind
    department: str
    holder: dict[str, object]
    record: QueuedRecord
    activation: QueuedRecord | None
    mdtrt_id: str | None = None
    #: what the clerk confirmed to let it through (:func:`_confirmations`)
    confirmed: tuple[str, ...] = ()

    @property
    def cross_region(self) -> bool:
        return self.record.cross_region

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (docs/json.md; the holder's ID number masked)."""
        return {
            "registration": self.kind.name,
            "department": self.department,
            "holder": self.holder,
            "msgid": self.record.msgid,
            "infno": self.record.infno,
            "online": self.mdtrt_id is not None,
            "mdtrt_id": self.mdtrt_id,
            "cross_region": self.cross_region,
            "insured_region": self.record.insured_region,
            "treatment_region": self.record.treatment_region,
            "activation": activation(self.activation),
            "confirmed": list(self.confirmed),
        }


def _confirmations(kind: RegistrationKind, identity: Identity, clerk: Clerk) -> tuple[str, ...]:
    """What the clerk confirmed before this registration: a maternity registration for a male holder
    (GB/T 2261.1 sex 1), which some regions allow for a spouse's care, is asked, and refused unless
    confirmed (nothing recorded)."""
    if kind.name != "maternity" or identity.sex != "1":
        return ()
    if not clerk.confirm("The holder is male: register maternity care (for a spouse's care, where the region allows it)?"):
        raise RefusedError("Maternity registration for a male holder not confirmed. Nothing was recorded.")
    return (MALE_MATERNITY,)


def _body(kind: RegistrationKind, person: Person | None, insutype: str, fields: dict[str, Any], now: str,
          department: str, confirmed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The registration's input: 2201 ``data``, 2401 ``mdtrtinfo`` (docs/platform.md); what the clerk
    confirmed in its extension field ``exp_content``, so that the journal and the platform keep it."""
    who = {"psn_no": person.psn_no} if person else {}
    if confirmed:
        fields = {**fields, "exp_content": {"clerk_confirmed": list(confirmed)}}
    if kind.infno == Infno.ADMISSION:
        return {"mdtrtinfo": {**who, **fields, "insutype": insutype, "med_type": kind.med_type, "ipt_no": "",
                              "adm_time": now, "adm_dept_codg": "", "adm_dept_name": department,
                              "dept_name": department, "begntime": now},
                "diseinfo": []}
    return {"data": {**who, **fields, "insutype": insutype, "med_type": kind.med_type, "begntime": now,
                     "ipt_otp_no": "", "atddr_no": "", "dr_name": "", "dept_code": "", "dept_name": department,
                     "caty": ""}}


def register(connection: Connection, site: Site, kind: str, department: str, clerk: Clerk,
             require_pin: bool = True) -> Registration:
    """Register the card's holder (module docstring). Refusals record nothing: counterfeit (8), wrong or
    blocked PIN (6, 7), card removed (4), unknown kind or no department, the platform's refusal or no
    insurance in force for this kind (15); a lost answer reversed (14) or not yet (17)."""
    if kind not in KINDS:
        raise RefusedError(f"Unknown registration type {kind!r}: choose {', '.join(KINDS)}")
    department = department.strip()
    if not department:
        raise RefusedError("A registration needs a department")
    chosen = KINDS[kind]
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    confirmed = _confirmations(chosen, identity, clerk)
    if require_pin:
        verify_holder_pin(at, clerk)
        clerk.say("PIN correct.")
    person = None
    if site.platform is not None:
        try:
            person = look_up(site, at)
        except PlatformRefusedError as err:
            raise RefusedError(f"{err} Nothing was recorded.") from None
        except CentralError as err:
            clerk.say(f"The platform cannot be asked now ({err}): the registration will wait in the queue.")
    insutype = chosen.insutype
    if person is not None:
        insurance = person.insurance(*chosen.insutypes)
        if insurance is None:
            raise RefusedError(f"The holder has no insurance in force for a {chosen.name} registration "
                               f"({insurances_line(person)}). Nothing was recorded.")
        insutype = insurance.insutype
    now = timestamp(site)
    activated = None
    if not is_active(identity, site.outbox):
        activated = site.outbox.add(
            Infno.ACTIVATION,
            {"data": {**person_fields(identity), "actv_way": "first-registration", "actv_time": now,
                      "medical_account": "normal"}},
            insured_region=person.insured_region if person else identity.issuing_region, card_sn=at.card_sn,
        )
        clerk.say(f"Card activated by this first registration ({activated.msgid}).")
    cross_region = (person.insured_region if person else identity.issuing_region) != site.station.region
    fields = {**person_fields(identity), "cross_region": cross_region}
    record, mdtrt_id = None, None
    if person is not None:
        try:
            record, output = site.online().transact(
                chosen.infno, _body(chosen, person, insutype, fields, now, department, confirmed),
                insured_region=person.insured_region, card_sn=at.card_sn, check=visit_id)
            mdtrt_id = visit_id(output)
        except PlatformRefusedError as err:
            raise RefusedError(f"{err} Nothing was recorded.") from None
        except CentralError as err:
            if err.maybe_processed:  # a lost answer, reversed: said as it is
                raise
            clerk.say(f"The platform cannot be reached ({err}): the registration will wait in the queue.")
    if record is None:
        record = site.outbox.add(chosen.infno, _body(chosen, None, insutype, fields, now, department, confirmed),
                                 insured_region=identity.issuing_region, card_sn=at.card_sn)
    if cross_region:
        clerk.say(f"Cross-region: insured in {record.insured_region}, treated in {site.station.region}.")
    where = f"visit {mdtrt_id}, {record.msgid}" if mdtrt_id else f"{record.msgid}, to be sent to the platform"
    clerk.say(f"Registered: {chosen.label}, {department} ({where}).")
    return Registration(chosen, department, holder(identity), record, activated, mdtrt_id, confirmed)


# --- the visit: cancellation, the bill, its refund -----------------------------------------------------

def find_visit(site: Site, mdtrt_id: str) -> QueuedRecord:
    """This terminal's registration of visit ``mdtrt_id`` (answered online, or queued and sent);
    :class:`RefusedError` when there is none."""
    found = [r for r in site.outbox.by_answer(tuple(VISIT_CANCELLATIONS), VISIT_PATHS, mdtrt_id.strip())
             if r.state in (ANSWERED, SENT)]
    if not found:
        raise RefusedError(f"No visit {mdtrt_id.strip()} was registered at this terminal (or the platform has not "
                           "answered its registration yet). Nothing was done.")
    return found[-1]


def _cancellation(site: Site, visit: QueuedRecord, mdtrt_id: str) -> QueuedRecord | None:
    cancels = [r for r in site.outbox.with_data(VISIT_CANCELLATIONS[visit.infno], "mdtrt_id", mdtrt_id)
               if r.state in (ANSWERED, CALLING)]
    return cancels[0] if cancels else None


@dataclass(frozen=True)
class Cancellation:
    """A visit cancelled (2202, 2404); ``already`` when this journal had cancelled it before."""

    mdtrt_id: str
    registration: QueuedRecord
    record: QueuedRecord
    already: bool

    def to_dict(self) -> dict[str, Any]:
        return {"mdtrt_id": self.mdtrt_id, "registration_msgid": self.registration.msgid, "msgid": self.record.msgid,
                "infno": self.record.infno, "already_cancelled": self.already}


def cancel(site: Site, mdtrt_id: str, clerk: Clerk) -> Cancellation:
    """Cancel visit ``mdtrt_id`` registered at this terminal (2202 or 2404, journaled); the platform
    refuses while a settlement stands on it (15)."""
    mdtrt_id = mdtrt_id.strip()
    visit = find_visit(site, mdtrt_id)
    earlier = _cancellation(site, visit, mdtrt_id)
    if earlier is not None:
        if earlier.state == CALLING:
            raise RefusedError(f"Visit {mdtrt_id} is being cancelled right now ({earlier.msgid}). Nothing was done.")
        clerk.say(f"Visit {mdtrt_id} was already cancelled ({earlier.msgid}): nothing new done.")
        return Cancellation(mdtrt_id, visit, earlier, True)
    data = {"psn_no": _psn_no(visit), "mdtrt_id": mdtrt_id, "ipt_otp_no": ""}
    try:
        record, _output = site.online().transact(VISIT_CANCELLATIONS[visit.infno], {"data": data},
                                                 insured_region=visit.insured_region, card_sn=visit.card_sn)
    except PlatformRefusedError as err:
        raise RefusedError(f"{err} Nothing was done.") from None
    clerk.say(f"Visit {mdtrt_id} cancelled ({record.msgid}).")
    return Cancellation(mdtrt_id, visit, record, False)


def _psn_no(visit: QueuedRecord) -> str:
    output = (visit.reply or {}).get("output") or {}
    parts = [output.get(key) for key in ("data", "result")]
    part: dict[str, Any] = next((p for p in parts if isinstance(p, dict)), {})
    return str(part.get("psn_no") or record_data(visit).get("psn_no") or "")


@dataclass(frozen=True)
class OutpatientBill:
    """An outpatient bill settled online (2207); ``already_paid`` when the journal had paid it before."""

    bill: str
    mdtrt_id: str
    holder: dict[str, object]
    split: Split
    record: QueuedRecord
    already_paid: bool

    def to_dict(self) -> dict[str, Any]:
        return {"bill_no": self.bill, "mdtrt_id": self.mdtrt_id, "holder": self.holder, "msgid": self.record.msgid,
                **self.split.to_dict(), "cross_region": self.record.cross_region, "already_paid": self.already_paid}


def settle_visit(connection: Connection, site: Site, mdtrt_id: str, bill_no: str, items: list[Item],
                 clerk: Clerk) -> OutpatientBill:
    """Settle the outpatient bill ``bill_no`` (the hospital's charge batch) of visit ``mdtrt_id``
    (module docstring). Refusals pay nothing: another card than the visit's (15), an admission (15: its
    settlement is the inpatient one), a bill paid before with another total (16), and the pharmacy's."""
    bill = bill_number(bill_no, "bill")
    total = bill_total(items)
    mdtrt_id = mdtrt_id.strip()
    visit = find_visit(site, mdtrt_id)
    if visit.infno != Infno.REGISTRATION:
        raise RefusedError(f"Visit {mdtrt_id} is an admission: its bill is settled at discharge, not at this "
                           "desk. Nothing was done.")
    if _cancellation(site, visit, mdtrt_id) is not None:
        raise RefusedError(f"Visit {mdtrt_id} was cancelled: there is nothing to settle. Nothing was done.")
    paid = standing(site, Infno.OUTPATIENT_SETTLEMENT, bill, "Bill")
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if at.card_sn != visit.card_sn:
        raise RefusedError(f"This card is not the one visit {mdtrt_id} was registered with. Nothing was paid.")
    if paid is not None:
        if record_data(paid).get("mdtrt_id") != mdtrt_id or record_data(paid).get("medfee_sumamt") != yuan(total):
            raise PaymentRefusedError(f"Bill {bill} was already paid with another visit or total ({paid.msgid}). "
                                      "Nothing was paid.")
        clerk.say(f"Bill {bill} is already paid ({paid.msgid}): nothing new paid.")
        return OutpatientBill(bill, mdtrt_id, holder(identity), Split.of(paid, total), paid, True)
    unpaid = "The bill was not paid: take another way to pay, or try again when the platform answers."
    platform = site.online()
    with platform_errors("bill", unpaid):
        person = look_up(site, at)
        if person.psn_no != _psn_no(visit):
            raise PaymentRefusedError(f"The platform names another person than visit {mdtrt_id}'s. Nothing was paid.")
        insutype = str(record_data(visit).get("insutype") or KINDS["outpatient"].insutype)
        med_type = str(record_data(visit).get("med_type") or "11")
        region = person.insured_region
        platform.query("2203", {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": person.psn_no, "med_type": med_type,
                                              "begntime": timestamp(site)}, "diseinfo": []}, insured_region=region)
        platform.query("2205", {"data": {"mdtrt_id": mdtrt_id, "chrg_bchno": bill, "psn_no": person.psn_no}},
                       insured_region=region)
        platform.query("2204", {"feedetail": [
            {"feedetl_sn": f"{bill}-{n:03d}", "mdtrt_id": mdtrt_id, "psn_no": person.psn_no, "chrg_bchno": bill,
             "rxno": "", "fee_ocur_time": timestamp(site), "med_list_codg": "", "medins_list_codg": "",
             **item.to_body()} for n, item in enumerate(items, 1)]}, insured_region=region)
    body = {"data": {"psn_no": person.psn_no, **person_fields(identity), "med_type": med_type, "medfee_sumamt": total,
                     "psn_setlway": "01", "mdtrt_id": mdtrt_id, "chrg_bchno": bill, "insutype": insutype,
                     "acct_used_flag": "1"}}
    record, split = settle(site, person, Infno.OUTPATIENT_SETTLEMENT, body, total, clerk, card_sn=at.card_sn,
                           verify_pin=lambda: verify_holder_pin(at, clerk), not_done=unpaid)
    return OutpatientBill(bill, mdtrt_id, holder(identity), split, record, False)


def refund(site: Site, bill_no: str, clerk: Clerk) -> Refund:
    """Refund an outpatient bill paid at this terminal (2208; :func:`terminal.flows.settlement.refund`)."""
    return refund_bill(site, Infno.OUTPATIENT_SETTLEMENT, bill_number(bill_no, "bill"), clerk, "Bill")
