"""asyncio glue for the native module: async iteration and coroutine handlers."""

import asyncio
import concurrent.futures
import inspect
import threading

# How long one worker-thread poll of a subscription lasts; a cancelled `async for` leaves a
# thread waiting at most this long.
_POLL = 0.2


async def anext(sub):
    """The next event of `sub` for `async for`: at once when one is waiting, else polled in the
    loop's default executor so that the event loop never blocks."""
    event = sub.try_next()
    if event is not None:
        return event
    loop = asyncio.get_running_loop()
    while True:
        event, ended = await loop.run_in_executor(None, sub._poll, _POLL)
        if event is not None:
            return event
        if ended:
            raise StopAsyncIteration


def running_loop():
    """The running event loop, or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_own_loop = None
_own_lock = threading.Lock()


def _adaptor_loop():
    """An event loop on a daemon thread, for coroutine handlers served outside any loop."""
    global _own_loop
    with _own_lock:
        if _own_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="thingsbus-rs-serve", daemon=True).start()
            _own_loop = loop
        return _own_loop


def call_handler(handler, ns, data, loop, seconds_left):
    """Runs a command handler (from a worker thread): a plain function is called, a coroutine it
    returns is run on `loop` (the one running at `serve` time) or the adaptor's own loop, and
    awaited until the command's deadline."""
    result = handler(ns, data)
    if inspect.isawaitable(result):
        if loop is None or loop.is_closed() or not loop.is_running():
            loop = _adaptor_loop()

        async def run():
            return await result

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(timeout=max(seconds_left, 0.001))
        except (TimeoutError, concurrent.futures.TimeoutError):
            future.cancel()
            raise TimeoutError("the handler did not finish before the command's deadline") from None
    return result
