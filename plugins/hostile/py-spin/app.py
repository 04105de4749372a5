# cb-world: guard
"""Test-only guard `py-spin` (Python): busy-loops forever, to prove the
deadline stops a Python guest. Never use outside tests."""

import wit_world


class WitWorld(wit_world.WitWorld):
    def evaluate(self, ctx):
        n = 0
        while True:
            n += 1
