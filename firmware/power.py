"""Battery mode: one wake-up of a battery node. Loaded only by battery nodes (heap).

Each wake-up reads every sensor once and appends the readings to the flash queue; on every
`power.send_every`-th wake-up it connects, sends everything queued, handles the downlink the
broker kept for it, publishes its status as asleep (`on: false`, `sleep`: seconds) and
disconnects; then it deep-sleeps until the next slot. An unreachable Wi-Fi or broker costs at
most `wifi.timeout_s` (or `power.awake_max_s` for the whole exchange): the readings stay on
flash for the next try and the node sleeps on schedule. Counters live in RTC memory
(firmware/rtcstate.py), which deep sleep keeps.

A sending wake-up of a node that knows the time does not send on the boundary: it reads, and
deep-sleeps until its send slot in the interval (node.Node._slot, docs/node-runtime.md "When a
node sends"), marked by flag 4 in RTC memory; that wake-up sends and reads nothing, and does
not count as a wake-up (so `send_every` keeps counting readings).
"""

import asyncio
import time

import clock
import log
import sensors


async def run(node):
    """One wake-up: read, send when due (at the node's slot), sleep until the next boundary."""
    p = node.cfg["power"]
    rtc = node.rtc
    pending = rtc.flags & 4  # this interval's send is due: the node slept until its slot
    slot = False
    if pending:
        import machine

        slot = machine.wake_reason() == machine.TIMER_WAKE  # (a meter pulse reads as well)
        rtc.flags &= ~4
        rtc.wakes -= 1
        rtc.save()
    log.info("node", "%s awake (wake %d%s): %d sensor(s), %d queued", node.node_id,
             rtc.wakes, ", send slot" if slot else "", len(node.sensors), len(node.q))
    asyncio.create_task(node.watchdog())
    asyncio.create_task(node.downlink())
    if not node.safe and not slot:
        await node.read_all()
    send = pending or rtc.wakes % p["send_every"] == 0 or node.safe or node.app_trial
    if send and not pending and not node.safe and not node.app_trial and len(node.q):
        t = clock.unix()
        wait = 0 if t is None else time.ticks_diff(node._slot(t), time.ticks_ms())
        if wait >= 3000:  # worth a sleep: the slot is later in the interval
            rtc.flags |= 4
            rtc.save()
            await sleep(node, wait, " (until the send slot)")
    if send:
        try:
            await asyncio.wait_for_ms(_send_all(node), p["awake_max_s"] * 1000)
        except Exception as exc:  # unreachable, timed out: the readings wait on flash
            log.warn("node", "not sent this time (%r); %d queued", exc, len(node.q))
        await node.client.close()
    await sleep(node)


async def _send_all(node):
    await node.connect()
    await asyncio.sleep_ms(300)  # queued downlink arrives right after the subscription
    while node.inbox or node.inflight or len(node.q) or node.replay:
        await node.pump()
        while node.inbox:
            await asyncio.sleep_ms(50)
    node.boot.healthy()
    await node.publish_status(on=False, sleep_s=_sleep_ms(node) // 1000)
    await node.client.disconnect()


def _sleep_ms(node):
    interval = node.interval() or 60
    t = clock.unix()
    if t is None:
        return interval * 1000
    return (interval - t % interval) * 1000


async def sleep(node, ms=None, why=""):
    """Deep sleep until the next boundary (or for `ms`: the send slot), wake pins armed."""
    import machine

    ms = _sleep_ms(node) if ms is None else ms
    await node.shutdown()
    sensors.arm_wake(node.wake_pins())  # all at once: ext0/ext1 hold one setting each
    node.boot.healthy()  # this wake-up ran to its end
    log.info("node", "deep sleep for %d ms%s", ms, why)
    machine.deepsleep(ms)
