"""Gate and Changes: the daemon's parts signal state without polling."""

from __future__ import annotations

import anyio

from streamd.flow import Changes, Gate


def test_gate_opens_and_closes_and_wakes_waiters() -> None:
    async def main() -> list[str]:
        gate = Gate(open=False)
        seen: list[str] = []

        async def waiter(name: str) -> None:
            await gate.wait_open()
            seen.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "a")
            tg.start_soon(waiter, "b")
            await anyio.wait_all_tasks_blocked()
            assert seen == []
            gate.open()
        gate.close()
        gate.close()  # idempotent
        assert not gate.is_open()
        gate.open()
        assert gate.is_open()
        await gate.wait_open()  # returns at once when open
        return sorted(seen)

    assert anyio.run(main) == ["a", "b"]


def test_changes_wake_each_waiter_once_per_change() -> None:
    async def main() -> tuple[int, int]:
        changes = Changes()
        start = changes.version()
        results: list[int] = []

        async def waiter() -> None:
            results.append(await changes.wait(start))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            changes.notify()
        changes.notify()
        # A change since the caller's last look returns at once.
        now = await changes.wait(start)
        return results[0] + results[1], now

    assert anyio.run(main) == (2, 2)
