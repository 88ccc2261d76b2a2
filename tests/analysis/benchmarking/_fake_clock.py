"""A clock for ``PhaseTimer`` in tests: time moves only when a toy module says so, so phase times
are exact and machine-independent."""


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def mark(self):
        return self.now

    def ms(self, a, b):
        return b - a

    def sync(self):
        pass
