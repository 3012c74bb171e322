"""Early-warning rules at the gateway (`[rules.NAME]`, gateway/rules.py).

Each kind is driven through the gateway's real ingest path (`handle_message`, real SQLite):
a threshold with a hold time and hysteresis, a rate of change (a burst main), a stale channel,
a district's water balance with a leak. A rule raises once and clears once, in the outbox's
alarm tables and as an event for the sinks carrying the readings that decided it. The config
errors name the key; a reload takes new rules and keeps the old ones when the file is broken;
the API lists the rules with the nodes they are raised on. The end-to-end test runs the
gateway process on a real Mosquitto: a pipe burst raises its rule exactly once, and SIGHUP
puts an edited rule in force.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import cbor2
import pytest

from gateway.channels import default_table
from gateway.config import load_config, parse_config
from gateway.daemon import Gateway
from gateway.errors import ConfigError

TABLE = default_table()
KEY = {ch.name: ch.id for ch in TABLE}
T0 = 1796428800  # 2026-12-04T00:00:00Z, a full hour

BURST = """
[rules.burst-ps3]
kind = "rate"
channel = "water_pressure"
nodes = ["ps-03"]
drop_percent = 40
window = "2m"
description = "pipe burst at pump station 3"
"""


def gateway(tmp_path: Path, rules: str, **extra) -> Gateway:
    (tmp_path / "gateway.toml").write_text(f'[sinks.file]\npath = "r.jsonl"\n'
                                           f'[api]\nenabled = false\n{rules}')
    gw = Gateway(load_config(tmp_path / "gateway.toml"), config_path=tmp_path / "gateway.toml",
                 **extra)
    gw.open_storage()
    return gw


def send(gw: Gateway, node: str, seq: int, t: int, values: dict[str, int], *,
         at: float | None = None) -> str:
    payload = cbor2.dumps([1, seq, t, {KEY[name]: v for name, v in values.items()}])
    return gw.handle_message(f"m/{node}/r", payload, received_at=t + 1 if at is None else at)


def events(gw: Gateway, alarm: str) -> list[dict]:
    rows = gw.box.query("SELECT body FROM items WHERE kind='event' ORDER BY id")
    return [b for b in (json.loads(r["body"]) for r in rows) if b["alarm"] == alarm]


# ---- the config ------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, error", [
    ('kind = "threshold"\nchannel = "chlorine"\nbelow = 0.0002',
     'rules.r1.channel is not a channel of the channel table (version 1; docs/wire-format.md '
     'lists them): got "chlorine"'),
    ('kind = "threshold"\nchannel = "free_chlorine"\nbelow = 0.0002\nhold = "10 minutes"',
     'rules.r1.hold must be a duration 0 to 30d such as "90s", "10m", "2h" (or a number of '
     'seconds): got "10 minutes"'),
    ('kind = "rate"\nchannel = "water_pressure"\ndrop_percent = 40\nwindow = "0s"',
     'rules.r1.window must be a duration 1s to 30d such as "90s", "10m", "2h" (or a number of '
     'seconds): got "0s"'),
    ('kind = "threshold"\nchannel = "free_chlorine"\nbelow = 0.0002\nclear = 0.0001',
     'rules.r1.clear must be >= below (0.0002): the level the value returns to before the '
     'alarm clears: got 0.0001'),
    ('kind = "stale"\nchannel = "river_stage"\nafter = "30m"',
     'rules.r1.channel is not a channel of the channel table (version 1; docs/wire-format.md '
     'lists them): got "river_stage"'),
    ('kind = "stale"\nchannel = "water_pressure:16"\nafter = "30m"',
     'rules.r1.channel has an instance that is not 1-15 (name:instance): got '
     '"water_pressure:16"'),
    ('kind = "surge"\nchannel = "water_pressure"',
     'rules.r1.kind must be one of threshold, rate, stale, balance: got "surge"'),
    ('kind = "stale"\nchannel = "water_pressure"\nafter = "30m"\nbelow = 3',
     'rules.r1.below is not a key of a stale rule (its keys: kind, channel, description, '
     'nodes, group, district, after)'),
    ('kind = "balance"\nchannel = "water_flow"\nmeter = "dm"\ndistrict = "C"\nloss_percent = 5',
     'rules.r1.channel must be a meter total for a balance (water_volume, gas_volume, '
     'heat_energy): got "water_flow"'),
    ('kind = "threshold"\nchannel = "free_chlorine"\nbelow = 0.0002\nnodes = ["pump 3"]',
     "rules.r1.nodes[0] must be a node id (node id may hold only a-z 0-9 _ -, got ' '): got "
     '"pump 3"'),
])
def test_a_bad_rule_is_a_one_line_error_naming_the_key(tmp_path, rule, error):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[sinks.file]\n[rules.r1]\n{rule}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {error}"
    assert "\n" not in str(info.value)


def test_rule_names_become_alarm_names():
    config = parse_config({"sinks": {"file": {}}, "rules": {
        "low-chlorine": {"kind": "threshold", "channel": "free_chlorine", "below": 0.0002,
                         "hold": "10m", "district": "Centrum"}}})
    (rule,) = config.rules
    assert (rule.alarm, rule.key, rule.hold_s, rule.unit) == (
        "rule:low-chlorine", KEY["free_chlorine"], 600.0, "kg/m3")


# ---- the kinds ---------------------------------------------------------------------------------

def test_threshold_holds_then_raises_once_and_clears_at_its_clear_level(tmp_path):
    gw = gateway(tmp_path, """
[rules.low-chlorine]
kind = "threshold"
channel = "free_chlorine"
below = 0.0002      # kg/m3: 0.2 mg/L
clear = 0.00025
hold = "10m"
""")
    chlorine = [(0, 30), (60, 15), (300, 18), (600, 19), (660, 19), (700, 12), (760, 22),
                (820, 26), (880, 15)]  # (s after T0, 0.01 mg/L)
    raised_at = []
    for seq, (dt, value) in enumerate(chlorine):
        assert send(gw, "wq-01", seq, T0 + dt, {"free_chlorine": value}) == "accepted"
        raised_at.append(gw.ingestor.registry.is_active("wq-01", "rule:low-chlorine"))
    # below 0.2 mg/L from 60 s on: held 10 min at 660 s; still raised at 0.22 (clear 0.25),
    # cleared at 0.26; 0.15 again at 880 s starts a new hold, not an alarm
    assert raised_at == [False, False, False, False, True, True, True, False, False]
    raised, cleared = events(gw, "rule:low-chlorine")
    assert raised["active"] and not cleared["active"]
    assert raised["detail"] == "free_chlorine 0.00019 kg/m3 < 0.0002 for 600 s"
    assert raised["readings"] == [
        {"n": "wq-01:free_chlorine", "v": 0.00015, "t": T0 + 60, "u": "kg/m3"},
        {"n": "wq-01:free_chlorine", "v": 0.00019, "t": T0 + 660, "u": "kg/m3"}]
    assert cleared["readings"] == [{"n": "wq-01:free_chlorine", "v": 0.00026,
                                    "t": T0 + 820, "u": "kg/m3"}]
    log = gw.box.query("SELECT alarm, raised_at, cleared_at FROM alarm_log")
    assert log == [{"alarm": "rule:low-chlorine", "raised_at": T0 + 661.0,
                    "cleared_at": T0 + 821.0}]


def test_a_pipe_burst_raises_the_rate_rule_exactly_once(tmp_path):
    gw = gateway(tmp_path, BURST)
    pressure = [4000] * 6 + [3500, 2600, 2300, 2250, 2200] + [2200] * 20 + [3100, 3900]
    for seq, hpa in enumerate(pressure):
        send(gw, "ps-03", seq, T0 + 10 * seq, {"water_pressure": hpa})
        send(gw, "ps-04", seq, T0 + 10 * seq, {"water_pressure": hpa})  # not in the scope
    raised, cleared = events(gw, "rule:burst-ps3")
    assert (raised["node"], raised["active"], cleared["active"]) == ("ps-03", True, False)
    # 400 000 Pa at 50 s, 260 000 at 70 s: 35 % (under 40); 230 000 at 80 s: 42.5 % in 30 s
    assert raised["detail"] == ("pipe burst at pump station 3: water_pressure dropped 42.5% in "
                                "30 s, from 400000 to 230000 Pa")
    assert raised["readings"] == [{"n": "ps-03:water_pressure", "v": 400000, "t": T0 + 50,
                                   "u": "Pa"},
                                  {"n": "ps-03:water_pressure", "v": 230000, "t": T0 + 80,
                                   "u": "Pa"}]
    # back within 20 % of 400 000 Pa (320 000): 310 000 is not, 390 000 is
    assert cleared["readings"][0]["v"] == 390000
    assert not gw.ingestor.registry.is_active("ps-04", "rule:burst-ps3")


def test_a_channel_gone_quiet_raises_stale_and_its_next_value_clears_it(tmp_path):
    gw = gateway(tmp_path, """
[rules.level-quiet]
kind = "stale"
channel = "water_pressure"
after = "30m"
""")
    send(gw, "ps-03", 0, T0, {"water_pressure": 4000}, at=T0)
    gw.ingestor.periodic(T0 + 1799)
    assert not gw.ingestor.registry.is_active("ps-03", "rule:level-quiet")
    gw.ingestor.periodic(T0 + 1800)
    gw.ingestor.periodic(T0 + 1900)
    assert gw.ingestor.registry.is_active("ps-03", "rule:level-quiet")
    send(gw, "ps-03", 1, T0 + 2000, {"water_pressure": 4000}, at=T0 + 2000)
    assert [e["active"] for e in events(gw, "rule:level-quiet")] == [True, False]


def test_a_district_balance_shows_the_loss_of_a_leak(tmp_path):
    """A district meter and three customers, readings every 15 minutes, for three hours;
    in the third hour a main leaks 200 L between the district meter and the customers."""
    gw = gateway(tmp_path, """
[rules.balance-centrum]
kind = "balance"
channel = "water_volume"
meter = "dm-centrum"
district = "Centrum"
loss_percent = 10
wait = "5m"
""")
    with gw.box.transaction():
        for node in ("dm-centrum", "c1", "c2", "c3", "other"):
            gw.box.nodes.register(node, board="esp32-devkitc", sensors=[], interval_s=900,
                                  group=None, district=None if node == "other" else "Centrum")
    use = {"c1": 30, "c2": 50, "c3": 20}  # litres per 15 minutes each
    totals = {"dm-centrum": 1_000_000, "c1": 5_000, "c2": 9_000, "c3": 2_000, "other": 0}
    for step in range(13):  # T0 .. T0 + 3 h
        t = T0 + 900 * step
        if step:
            for node, litres in use.items():
                totals[node] += litres
            totals["dm-centrum"] += sum(use.values()) + (50 if step > 8 else 0)
            totals["other"] += 500  # not a customer of the district: left out
        for node, total in totals.items():
            assert send(gw, node, step, t, {"water_volume": total}, at=t) == "accepted"
        gw.ingestor.periodic(t + 300)
    # hours 1 and 2: 400 L in, 400 L used; hour 3: 600 L in, 400 L used, 200 L (33 %) lost
    (raised,) = events(gw, "rule:balance-centrum")
    assert raised["node"] == "dm-centrum" and raised["active"]
    assert raised["detail"] == (f"hour from {T0 + 7200}: 0.6 m3 in, 0.4 m3 through 3 meters, "
                                "0.2 m3 (33.3333%) unaccounted")
    assert [r["v"] for r in raised["readings"]] == [0.6, 0.4]


# ---- reload and the API --------------------------------------------------------------------------

def test_reload_takes_new_rules_and_keeps_them_when_the_file_is_broken(tmp_path):
    gw = gateway(tmp_path, BURST)
    for seq, hpa in enumerate([4000, 4000, 2000]):
        send(gw, "ps-03", seq, T0 + 10 * seq, {"water_pressure": hpa})
    assert gw.ingestor.registry.is_active("ps-03", "rule:burst-ps3")
    conf = tmp_path / "gateway.toml"
    good = conf.read_text()
    conf.write_text(good.replace('window = "2m"', 'window = "2 minutes"'))
    with pytest.raises(ConfigError, match="rules.burst-ps3.window must be a duration"):
        gw.reload_rules()
    assert [r.window_s for r in gw.config.rules] == [120.0]
    assert gw.stats.snapshot()["rules_reload_errors"] == 1
    conf.write_text(good.replace('window = "2m"', 'window = "5m"') + """
[rules.pressure-high]
kind = "threshold"
channel = "water_pressure"
above = 600000
""")
    assert gw.reload_rules() == ["changed burst-ps3", "added pressure-high"]
    # a changed rule starts again: its alarm is cleared, with the reason
    assert events(gw, "rule:burst-ps3")[-1]["detail"] == "the rule was changed or removed"
    send(gw, "ps-03", 3, T0 + 30, {"water_pressure": 6500})
    assert gw.ingestor.registry.is_active("ps-03", "rule:pressure-high")


def test_the_api_lists_the_rules_with_where_they_are_raised(tmp_path):
    import urllib.error
    import urllib.request

    from gateway.webapp import ApiServer

    (tmp_path / "gateway.toml").write_text(f'[sinks.file]\n[api]\nport = 0\ntoken = "t0ken"\n'
                                           f'{BURST}')
    gw = Gateway(load_config(tmp_path / "gateway.toml"), config_path=tmp_path / "gateway.toml")
    gw.open_storage()
    for seq, hpa in enumerate([4000, 4000, 2000]):
        send(gw, "ps-03", seq, T0 + 10 * seq, {"water_pressure": hpa})
    server = ApiServer(gw)
    server.start()
    try:
        def call(path: str, method: str = "GET"):
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method,
                                         headers={"Authorization": "Bearer t0ken"})
            with urllib.request.urlopen(req, timeout=10) as reply:
                return json.loads(reply.read())
        (rule,) = call("/api/rules")
        assert {k: rule[k] for k in ("name", "kind", "channel", "alarm", "scope")} == {
            "name": "burst-ps3", "kind": "rate", "channel": "water_pressure",
            "alarm": "rule:burst-ps3", "scope": {"nodes": ["ps-03"]}}
        assert [r["node"] for r in rule["raised"]] == ["ps-03"]
        assert call("/api/rules/reload", "POST") == {"rules": 1, "changes": []}
        conf = tmp_path / "gateway.toml"
        conf.write_text(conf.read_text().replace("drop_percent = 40", "drop_percent = 400"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            call("/api/rules/reload", "POST")
        assert refused.value.code == 409
        assert json.loads(refused.value.read()) == {
            "error": f"{conf}: rules.burst-ps3.drop_percent must be a number 0.1-100: got 400"}
        assert [r["name"] for r in call("/api/rules")] == ["burst-ps3"]
    finally:
        server.stop()
        gw.box.close()


# ---- end to end -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_burst_through_broker_and_gateway_process_and_sighup_reload(tmp_path, broker, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from gateway_support import GatewayProcess, publish, wait_for

    with GatewayProcess(tmp_path / "gw", broker, extra=BURST) as gw:
        gw.wait_subscribed()
        now = int(time.time())
        pressure = [4000] * 6 + [3500, 2600, 2300, 2200] + [2200] * 10
        publish(broker, [("m/ps-03/r", cbor2.dumps([1, seq, now - 300 + 10 * seq,
                                                    {KEY["water_pressure"]: hpa}]))
                         for seq, hpa in enumerate(pressure)])
        events_file = gw.dir / "events.jsonl"

        def rule_events():
            if not events_file.exists():
                return []
            return [json.loads(line) for line in events_file.read_text().splitlines()
                    if 'alarm:rule:burst-ps3"' in line]
        wait_for(lambda: rule_events(), 30, "the burst event", gw.log)
        time.sleep(1.5)  # anything more would have arrived by now
        (event,) = rule_events()
        assert event["n"] == "ps-03:alarm:rule:burst-ps3" and event["vb"] is True
        assert event["vs"].startswith("pipe burst at pump station 3: water_pressure dropped")
        assert [r["v"] for r in event["readings"]] == [400000, 230000]

        # the dashboard: the rule's alarm needs attention, and the rules table says where
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API")
        url = gw.url
        browser.get(f"{url}/alarms")
        browser.find_element(By.ID, "token").send_keys(gw.token)
        browser.find_element(By.ID, "login").click()
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.current_url == f"{url}/alarms")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#attention tbody tr"))
        first = browser.find_element(By.CSS_SELECTOR, "#attention tbody tr")
        assert [c.text for c in first.find_elements(By.TAG_NAME, "td")][:2] == [
            "ps-03", "rule:burst-ps3"]
        cells = browser.find_elements(By.CSS_SELECTOR, '#rules tr[data-rule="burst-ps3"] td')
        assert [c.text for c in cells] == ["burst-ps3\npipe burst at pump station 3", "rate",
                                           "water_pressure", "nodes ps-03", "ps-03"]
        # SIGHUP reads the rules again: an added rule is in force for the next reading
        gw.conf.write_text(gw.conf.read_text() + '\n[rules.high]\nkind = "threshold"\n'
                           'channel = "water_pressure"\nabove = 500000\n')
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "event=rules_reloaded" in gw.log(), 30, "the reload", gw.log)
        assert 'changes="added high"' in gw.log()
        publish(broker, [("m/ps-03/r", cbor2.dumps([1, len(pressure), now,
                                                    {KEY["water_pressure"]: 5500}]))])
        wait_for(lambda: any('alarm:rule:high"' in line for line in
                             events_file.read_text().splitlines()), 30, "the new rule's event",
                 gw.log)
        status, rules = gw.api("/api/rules")
        assert status == 200 and [r["name"] for r in rules] == ["burst-ps3", "high"]
