"""Money at rest: the ledger (credits, reservations, settlement, CDRs), accounts and
cards, recharge codes, rate decks as stored, low-balance notices, and call records and
reports. Each operation is one database transaction with its result as a value.

The pure rating arithmetic is ``ivr.rating``; taking card payments is ``ivr.payments``;
the money of a live call, claim to settlement, is ``ivr.live.charging``.
"""
