"""Route ``revalue-ivr``: the call to a mobile operator's own revalue IVR, once answered.

:class:`ivr.revalue.ivr_operator.IvrOperator` originates it into the ``ivr-revalue-ivr``
context (dialplan/ivr-revalue-ivr.conf) with the request id in ``IVR_RECHARGE``; the
request itself (number, amount, code) never leaves this process but as keys
(:func:`ivr.revalue.ivr_operator.converse`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..agi import AgiSession
from ..revalue.ivr_operator import RECHARGE_VARIABLE, converse

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger("ivr.flows.revalue_ivr")


async def revalue_ivr(call: AgiSession, app: App) -> None:
    request_id = await call.get_variable(RECHARGE_VARIABLE) or ""
    pending = app.ivr_recharges.get(request_id)
    if pending is None:
        log.warning("[%s] no recharge %r is waiting for this call: hung up",
                    call.env.uniqueid, request_id[:64])
        await call.hangup()
        return
    await converse(call, pending)
