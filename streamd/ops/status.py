"""What systemd is told, and when (README "Running under systemd").

One task per daemon, reading only the state object: READY=1 once the daemon can take tweets
or is deliberately waiting on X, a STATUS= line whenever the state changes, and WATCHDOG=1
while the pipeline moves. Outside systemd every send is a no-op.
"""

from __future__ import annotations

import anyio

from streamd.ops import sdnotify
from streamd.ops.health import DaemonState

# The STATUS= line carries the received/published counts, which change with every tweet
# but are not state changes: they are refreshed this often, so `systemctl status` shows
# numbers that move. State changes themselves are sent at once.
COUNTS_EVERY_S = 1.0


async def report_to_systemd(
    state: DaemonState, *, watchdog: sdnotify.Watchdog | None = None,
    counts_every: float = COUNTS_EVERY_S,
) -> None:
    """Run until cancelled."""
    watchdog = sdnotify.Watchdog() if watchdog is None else watchdog
    async with anyio.create_task_group() as tg:
        if watchdog.enabled:
            tg.start_soon(watchdog.run, state.moving)
        ready_sent = False
        sent = ""
        seen = state.changes.version()
        while True:
            if not ready_sent and state.ready_to_announce():
                sent = state.status_line()
                sdnotify.ready(sent)
                ready_sent = True
            line = state.status_line()
            if line != sent:
                sdnotify.status(line)
                sent = line
            with anyio.move_on_after(counts_every):
                seen = await state.changes.wait(seen)
