"""Battery mode: one wake-up of a battery node. Loaded only by battery nodes (heap).

Each wake-up reads every sensor once and appends the readings to the flash queue; on every
`power.send_every`-th wake-up it connects, sends everything queued, handles the downlink the
broker kept for it, publishes its status as asleep (`on: false`, `sleep`: seconds) and
disconnects; then it deep-sleeps until the next slot. An unreachable Wi-Fi or broker costs at
most `wifi.timeout_s` (or `power.awake_max_s` for the whole exchange): the readings stay on
flash for the next try and the node sleeps on schedule. Counters live in RTC memory
(firmware/rtcstate.py), which deep sleep keeps.
"""

import asyncio

import clock
import log
import sensors


async def run(node):
    """One wake-up: read, send when due, sleep until the next slot."""
    p = node.cfg["power"]
    log.info("node", "%s awake (wake %d): %d sensor(s), %d queued", node.node_id,
             node.rtc.wakes, len(node.sensors), len(node.q))
    asyncio.create_task(node.watchdog())
    asyncio.create_task(node.downlink())
    if not node.safe:
        await node.read_all()
    if node.rtc.wakes % p["send_every"] == 0 or node.safe or node.app_trial:
        try:
            await asyncio.wait_for_ms(_send_all(node), p["awake_max_s"] * 1000)
        except Exception as exc:  # unreachable, timed out: the readings wait on flash
            log.warn("node", "not sent this time (%r); %d queued", exc, len(node.q))
        await node.client.close()
    await sleep(node)


async def _send_all(node):
    await node.connect()
    await asyncio.sleep_ms(300)  # queued downlink arrives right after the subscription
    while node.inbox or node.inflight or len(node.q):
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


async def sleep(node):
    import machine

    ms = _sleep_ms(node)
    await node.shutdown()
    sensors.arm_wake(node.wake_pins())  # all at once: ext0/ext1 hold one setting each
    node.boot.healthy()  # this wake-up ran to its end
    log.info("node", "deep sleep for %d ms", ms)
    machine.deepsleep(ms)
