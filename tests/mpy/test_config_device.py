# The node's config validation: every problem names the field, the rule and the value.
import config


def good():
    return {
        "node_id": "node-01",
        "broker": {"host": "127.0.0.1", "port": 1883},
        "i2c": {"0": {"scl": 22, "sda": 21}},
        "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 118, "interval_s": 10}],
    }


def errors_of(cfg):
    try:
        config.validate(cfg)
    except config.ConfigError as exc:
        return str(exc)
    raise AssertionError("accepted a bad config: %r" % cfg)


def test_good_config_gets_defaults():
    c = config.validate(good())
    assert c["prefix"] == "m"
    assert c["broker"]["keepalive"] == 60
    assert c["i2c"]["0"]["freq"] == 400000
    assert c["sensors"][0]["instance"] == 0


def test_bad_fields_are_named_with_rule_and_value():
    cfg = good()
    cfg["node_id"] = "Node 1"
    cfg["broker"]["port"] = "1883"
    cfg["sensors"][0]["interval_s"] = 0
    cfg["sensors"][0]["driver"] = "bme281"
    msg = errors_of(cfg)
    assert 'node_id must be 1-32 characters' in msg and '"Node 1"' in msg, msg
    assert 'broker.port must be an integer 1-65535: got "1883"' in msg, msg
    assert "sensors[0].interval_s must be an integer 1-86400: got 0" in msg, msg
    assert 'sensors[0].driver must be one of bme280, ' in msg and 'got "bme281"' in msg, msg


def test_missing_required_fields():
    msg = errors_of({"broker": {}})
    assert "node_id is required" in msg, msg
    assert "broker.host is required" in msg, msg


def test_sensor_on_unconfigured_bus():
    cfg = good()
    cfg["sensors"][0]["bus"] = "i2c1"
    assert 'sensors[0].bus must name a configured bus such as "i2c0": got "i2c1"' in errors_of(cfg)


def test_not_json():
    with open("config.json", "w") as f:
        f.write("{node_id: ")
    try:
        config.load("config.json")
    except config.ConfigError as exc:
        assert "not valid JSON" in str(exc)
        return
    raise AssertionError("accepted broken JSON")


def test_unknown_keys_are_named():
    cfg = good()
    cfg["sensorz"] = []
    cfg["broker"]["hots"] = "x"
    msg = errors_of(cfg)
    assert "sensorz is not a known setting" in msg, msg
    assert "broker.hots is not a known setting" in msg, msg


def test_runtime_sections_defaults_and_errors():
    c = config.validate(good())
    assert c["power"] == {"mode": "mains", "send_every": 1, "awake_max_s": 60}
    assert c["queue"]["max_kb"] == 64 and c["version"] == 0 and c["watchdog_s"] == 60
    cfg = good()
    cfg["power"] = {"mode": "solar"}
    cfg["queue"] = {"max_kb": 1}
    cfg["version"] = -1
    msg = errors_of(cfg)
    assert 'power.mode must be "mains" or "battery": got "solar"' in msg, msg
    assert "queue.max_kb must be an integer 2-4096 (KiB of flash): got 1" in msg, msg
    assert "version must be an integer >= 0: got -1" in msg, msg


def test_merge_patch_rfc7396():
    # RFC 7396 section 3 example
    from downlink import merge_patch

    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    patch = {"a": "z", "c": {"f": None}}
    assert merge_patch(target, patch) == {"a": "z", "c": {"d": "e"}}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}, "the target must not change"


def test_fallback_to_last_good_with_reason():
    import json

    with open("config.good.json", "w") as f:
        f.write(json.dumps(dict(good(), version=4)))
    bad = good()
    bad["broker"]["port"] = 0
    with open("config.json", "w") as f:
        f.write(json.dumps(bad))
    raw, cfg, problem = config.load_with_fallback()
    assert cfg["version"] == 4 and cfg["broker"]["port"] == 1883
    assert "broker.port must be an integer 1-65535: got 0" in problem, problem
    assert "last good configuration (version 4)" in problem, problem
    with open("config.json", "w") as f:
        f.write(json.dumps(good()))
    raw, cfg, problem = config.load_with_fallback()
    assert problem is None and cfg["version"] == 0


def test_a_new_config_that_never_connects_is_put_aside_for_the_last_good_one():
    # node.py counts the failed connects; session.py (loaded for the call) swaps the files and
    # says whether the node must restart on the last good configuration
    import asyncio
    import json

    import bootinfo
    import node

    with open("config.good.json", "w") as f:
        f.write(json.dumps(dict(good(), version=4)))
    new = dict(good(), version=5)
    with open("config.json", "w") as f:
        f.write(json.dumps(new))
    boot = bootinfo.Boot()
    boot.raw, boot.cfg = new, config.validate(new)
    n = node.Node(boot)
    resets = []
    reset, node._reset = node._reset, lambda: resets.append(n.connect_failures)
    try:
        for _ in range(8):
            asyncio.run(n._connect_failed(OSError(113)))
        assert resets == [8], resets
        with open("config.json") as f:
            assert json.loads(f.read())["version"] == 4
        with open("config.rejected.json") as f:
            assert json.loads(f.read())["version"] == 5
        with open("config.err") as f:
            err = f.read()
        assert "config v5 could not connect 8 times in a row" in err, err
        # now on the last good one: nothing better to go back to, no restart
        asyncio.run(n._connect_failed(OSError(113)))
        assert resets == [8], resets
    finally:
        node._reset = reset
        n.q.close()
