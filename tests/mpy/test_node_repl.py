# The running node as the REPL sees it (`node._current`): what `meterlink status` and
# `meterlink check` inspect and resume after a Ctrl-C.
import bootinfo
import config
import node


def _boot():
    b = bootinfo.Boot()
    b.raw = {"node_id": "repl-1", "broker": {"host": "127.0.0.1", "port": 1}, "sensors": []}
    b.cfg = config.validate(b.raw)
    return b


def test_a_node_stopped_while_it_is_built_is_not_left_for_the_repl():
    # Ctrl-C at boot can stop Node() half way; a half-built node has no MQTT client or queue to
    # close, so the REPL must find none (the CLI then soft-resets instead of resuming it)
    boot = _boot()
    made = node.fqueue.FlashQueue

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    node.fqueue.FlashQueue = ctrl_c
    try:
        node.Node(boot)
        raise AssertionError("the constructor went on past the interrupt")
    except KeyboardInterrupt:
        pass
    finally:
        node.fqueue.FlashQueue = made
    assert node._current is None
    n = node.Node(boot)
    assert node._current is n and n.client is not None and n.q is not None
