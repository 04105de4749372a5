# cb-world: guard
"""Guard `py-amount-limit` (Python): allows a firing only when `data.amount`
is a number no greater than `config.max`; with `config.budget_place`, also
only when the amounts of the owner's other tokens in that place (same
`data.owner`, read page by page through `token-reader.list-place`) plus this
amount stay within `max`.

Config: `{"max": 1000, "budget_place": "approved", "page_size": 100}`
(`budget_place` and `page_size`, the tokens asked for per page, optional).
Deny codes: `bad-config`, `missing-amount` (`{"field": "/amount"}`),
`amount-over-limit` (`{"max", "amount"}`), `over-budget`
(`{"budget", "spent", "amount"}`), `read-failed`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import token_reader
from wit_world.imports.types import Decision_Allow, Decision_Deny, Denial


def deny(code, message, **details):
    return Decision_Deny(Denial(code, message, json.dumps(details)))


def number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def obj(text):
    """A JSON object document as a dict ({} for null or a non-object)."""
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def spent_by(owner, workflow_id, place, skip_id, page_size):
    """Sum of `amount` over the other tokens in `place` owned by `owner`."""
    spent, cursor = 0, None
    while True:
        page = token_reader.list_place(workflow_id, place, cursor, page_size)
        for t in page.tokens:
            data = obj(t.data)
            if t.id != skip_id and data.get("owner") == owner:
                spent += number(data.get("amount")) or 0
        if page.next is None:
            return spent
        cursor = page.next


class WitWorld(wit_world.WitWorld):
    def evaluate(self, ctx):
        config = obj(ctx.config)
        limit = number(config.get("max"))
        if limit is None:
            return deny("bad-config", "config needs a numeric `max`")
        data = obj(ctx.token.data)
        amount = number(data.get("amount"))
        if amount is None:
            return deny("missing-amount", "the token has no numeric `amount`", field="/amount")
        if amount > limit:
            return deny("amount-over-limit", f"amount {amount} exceeds the limit of {limit}",
                        max=limit, amount=amount)
        place = config.get("budget_place")
        if place:
            owner, page_size = data.get("owner"), int(config.get("page_size", 100))
            try:
                spent = spent_by(owner, ctx.token.workflow_id, place, ctx.token.id, page_size)
            except Err as e:
                return deny("read-failed", f"listing `{place}` failed: {e.value.value}")
            if spent + amount > limit:
                return deny("over-budget",
                            f"{owner} has {spent} in `{place}`; {amount} more exceeds the budget of {limit}",
                            budget=limit, spent=spent, amount=amount)
        return Decision_Allow()
