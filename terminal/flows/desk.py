"""The hospital registration desk (DESIGN.md items 4, 5, 6).

Insert card -> genuine-card check -> read identity -> PIN when the site requires it -> the registration
(outpatient, hospitalisation or maternity, and a department) is queued. A card not yet activated is
activated by its first registration: an ``SS01`` record ("activated by first registration") is queued
just before the registration, and the card is active at this terminal from then on. A card issued in
another region is flagged cross-region (insured region and treatment region in the envelope, and
``cross_region`` in the body). Codes: docs/flows.md, "Registration codes" (project convention where
central-service.md marks them unconfirmed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drivers.connection import Connection
from terminal.flows.common import (
    Clerk,
    RefusedError,
    Site,
    holder_line,
    is_active,
    person_fields,
    present_card,
    timestamp,
    verify_holder_pin,
)
from terminal.queue import QueuedRecord


@dataclass(frozen=True)
class RegistrationKind:
    """One kind of registration: its transaction code, medical type and insurance type."""

    name: str
    label: str
    infno: str
    med_type: str
    insutype: str


#: docs/flows.md, "Registration codes"
KINDS: dict[str, RegistrationKind] = {
    kind.name: kind
    for kind in (
        RegistrationKind("outpatient", "门诊 outpatient", "2201", "11", "310"),
        RegistrationKind("hospitalisation", "住院 hospitalisation", "2401", "21", "310"),
        RegistrationKind("maternity", "生育 maternity", "2201", "51", "510"),
    )
}


@dataclass(frozen=True)
class Registration:
    """What the desk queued: the registration, and the activation when this was the first one."""

    kind: RegistrationKind
    department: str
    holder: str
    record: QueuedRecord
    activation: QueuedRecord | None

    @property
    def cross_region(self) -> bool:
        return self.record.cross_region

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready result (the holder line is masked)."""
        return {
            "registration": self.kind.name,
            "department": self.department,
            "holder": self.holder,
            "msgid": self.record.msgid,
            "infno": self.record.infno,
            "cross_region": self.cross_region,
            "insured_region": self.record.insured_region,
            "treatment_region": self.record.treatment_region,
            "activated_by_this_registration": self.activation is not None,
            "activation_msgid": self.activation.msgid if self.activation else None,
        }


def register(connection: Connection, site: Site, kind: str, department: str, clerk: Clerk,
             require_pin: bool = True) -> Registration:
    """Register the card's holder (see the module docstring). Refusals queue nothing:
    counterfeit (exit 8), wrong or blocked PIN (6, 7), card removed (4), unknown kind (15)."""
    if kind not in KINDS:
        raise RefusedError(f"Unknown registration type {kind!r}: choose {', '.join(KINDS)}")
    department = department.strip()
    if not department:
        raise RefusedError("A registration needs a department")
    chosen = KINDS[kind]
    at = present_card(connection, site)
    identity = at.identity
    clerk.say(f"Card genuine: {holder_line(identity)}")
    if require_pin:
        verify_holder_pin(at, clerk)
        clerk.say("PIN correct.")
    now = timestamp(site)
    activation = None
    if not is_active(identity, site.outbox):
        activation = site.outbox.add(
            "SS01",
            {"data": {**person_fields(identity), "actv_way": "first-registration", "actv_time": now,
                      "medical_account": "normal"}},
            insured_region=identity.issuing_region, card_sn=at.card_sn,
        )
        clerk.say(f"Card activated by this first registration ({activation.msgid}).")
    cross_region = identity.issuing_region != site.station.region
    body = {
        **person_fields(identity),
        "insutype": chosen.insutype,
        "med_type": chosen.med_type,
        "begntime": now,
        "dept_name": department,
        "cross_region": cross_region,
    }
    record = site.outbox.add(chosen.infno, {"data": body}, insured_region=identity.issuing_region,
                             card_sn=at.card_sn)
    if cross_region:
        clerk.say(f"Cross-region: insured in {identity.issuing_region}, treated in {site.station.region}.")
    clerk.say(f"Registered: {chosen.label}, {department} ({record.msgid}).")
    return Registration(chosen, department, holder_line(identity), record, activation)
