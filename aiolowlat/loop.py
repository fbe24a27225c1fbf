"""Placeholder: replaced by the io_uring loop."""
import asyncio


class Loop(asyncio.SelectorEventLoop):
    pass


def new_event_loop(*, busy_poll=False):
    return Loop()


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    def _loop_factory(self):
        return new_event_loop()


def install():
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, debug=None, busy_poll=False):
    with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(busy_poll=busy_poll)) as r:
        return r.run(main)
