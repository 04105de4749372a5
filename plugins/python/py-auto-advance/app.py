# cb-world: action
"""Action `py-auto-advance` (Python): after a transition, asks the host to
fire `config.transition` on the same token (its guards and CAS apply), with
input `{"by": "py-auto-advance", "event": <event sequence>}`, and logs it.

Config: `{"transition": "pay"}`. Fails (and is retried) without
`transition` or when the request is refused.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, transitions


class WitWorld(wit_world.WitWorld):
    def run(self, ctx):
        config = json.loads(ctx.config) or {}
        transition = config.get("transition") if isinstance(config, dict) else None
        if not isinstance(transition, str) or not transition:
            raise Err("config.transition is required")
        token = ctx.token
        event = {"by": "py-auto-advance", "event": ctx.event_sequence}
        try:
            transitions.request(token.workflow_id, token.id, transition, json.dumps(event))
        except Err as e:
            raise Err(f"requesting {transition} failed: {e.value.value}")
        log.log(log.Level.INFO, f"requested {transition} for {token.id}")
