"""`meterlink gateway`: runs the gateway daemon in the foreground, or sends a downlink.

    meterlink gateway --config /etc/meterlink/gateway.toml
    meterlink gateway send --config FILE NODE config PATCH.json --version N
    meterlink gateway send --config FILE --group G cmd NAME [key=value ...]
    meterlink gateway ota --config FILE --nodes a,b,c --bundle app.mlb [--canary 1]
    meterlink gateway replay --config FILE [ID ... | --sink S --all] [--again]
    meterlink gateway node --config FILE retire NODE [--note TEXT] | reinstate NODE | delete NODE
    meterlink gateway user --config FILE add NAME [--password-stdin] | remove NAME | list

The config is checked completely before anything connects; an invalid one exits with status 2
and a message naming the key. SIGINT or SIGTERM stop the gateway cleanly (status 0).

`send` publishes a configuration update (retained on `{prefix}/{node}/c`) or a command
(`{prefix}/{node}/k`) to one node or every registered node of a group, waits for each node's
acknowledgement on `{prefix}/{node}/a` until `--timeout`, and prints one line per node:
`ok`, `failed: <the node's reason>` or `timeout`. Exit status 0 only when every node
acknowledged with ok. PATCH.json is a file, `-` for stdin, or inline JSON starting with `{`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import SAMPLE_PATH, load_config
from gateway.errors import EXIT_ERROR, EXIT_INPUT, EXIT_OK, ConfigError, SinkError, UserError
from gateway.logfmt import configure_logging

HELP = "run the gateway (MQTT readings in, outbox, sinks out), or `gateway send` a downlink"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"gateway config (TOML); every key is described in {SAMPLE_PATH}")
    sub = parser.add_subparsers(dest="gateway_action", metavar="ACTION")
    send = sub.add_parser("send", help="send a config update or command to nodes, wait for "
                                       "their acknowledgements",
                          description=__doc__.split("\n\n")[3])
    send.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    send.add_argument("--group", help="every registered node of this group")
    send.add_argument("--version", dest="cfg_version", type=int, metavar="N",
                      help="configuration version (for `config`), >= 1 and above the node's")
    send.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="seconds to wait for acknowledgements (default [gateway] "
                           "ack_timeout_s)")
    send.add_argument("words", nargs="*", metavar="[NODE] config PATCH | cmd NAME [k=v...]")
    ota = sub.add_parser(
        "ota", help="update nodes' code over the air from an app bundle, canaries first",
        description="Sends an app bundle (`meterlink bundle`) to nodes in chunks over MQTT. "
                    "Each node checks every chunk and the whole bundle (SHA-256), installs it "
                    "in its idle slot, restarts on it and keeps it once healthy (connected, a "
                    "reading acknowledged), or rolls back. The canaries go first; the rollout "
                    "stops by itself when more than --max-failed percent of the nodes updated "
                    "so far failed. Exit status 0 only when every node runs the bundle.")
    ota.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    ota.add_argument("--bundle", required=True, type=Path, metavar="FILE")
    ota.add_argument("--nodes", metavar="A,B,...", help="node ids, comma-separated")
    ota.add_argument("--group", help="every registered node of this group")
    ota.add_argument("--canary", type=int, default=None, metavar="N",
                     help="nodes updated first, alone (default: 1 when there are 3 or more "
                          "nodes, else 0)")
    ota.add_argument("--max-failed", type=float, default=0.0, metavar="PCT",
                     help="stop when more than this percentage of the nodes updated so far "
                          "failed (default 0: the first failure stops the rollout)")
    ota.add_argument("--parallel", type=int, default=8, metavar="N",
                     help="nodes updated at once after the canaries (default 8)")
    ota.add_argument("--chunk", type=int, default=512, metavar="BYTES",
                     help="bytes per chunk, 64-768 (default 512)")
    ota.add_argument("--deadline", type=int, default=300, metavar="S",
                     help="seconds a node has to become healthy on the update before it rolls "
                          "back (10-3600, default 300)")
    ota.add_argument("--ack-timeout", type=float, default=15.0, metavar="S",
                     help="seconds of silence before asking a node where it is (default 15)")
    ota.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                     help="seconds a wave may take before its silent nodes fail (default 1800)")
    ota.add_argument("--force", action="store_true",
                     help="install even when the node runs the same or a newer version, or "
                          "rolled this one back")


    replay = sub.add_parser(
        "replay", help="list dead letters, or queue them again for their sink",
        description="Without IDs: lists the dead letters (newest first) with their reason: "
                    "`rejected` (the platform refused the batch: status and reply) or "
                    "`unconvertible` (the sink could not put the record in its format). "
                    "With IDs (or --sink S --all): queues each letter's records again for its "
                    "sink, in the outbox beside a running gateway, which delivers them within "
                    "a second or two. A letter is replayed once; --again replays it anyway "
                    "(the platform then sees its records twice and must dedup by rid).")
    replay.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids")
    replay.add_argument("--sink", help="only this sink's letters")
    replay.add_argument("--all", action="store_true",
                        help="every letter not replayed yet (of --sink S when given)")
    replay.add_argument("--again", action="store_true",
                        help="replay letters that were replayed before, too")
    replay.add_argument("--limit", type=int, default=50, metavar="N",
                        help="letters listed (default 50)")


    node = sub.add_parser(
        "node", help="retire a node, put it back in service, or delete one registered by "
                     "mistake (through the running gateway's API)",
        description="retire: the node leaves the fleet views, its open alarms clear, it raises "
                    "no more, and whatever still arrives under its id is quarantined as "
                    "`retired` (bytes kept), never counted; its sequence state stays, so no "
                    "reading can be counted twice if it comes back. reinstate: back in "
                    "service. delete: only for a node that never sent a reading.")
    node.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    node.add_argument("node_action", choices=("retire", "reinstate", "delete"))
    node.add_argument("node_id", metavar="NODE")
    node.add_argument("--note", default="", help="why (retire): kept with the node")

    user = sub.add_parser(
        "user", help="dashboard users: add one (or give it a new password), remove one, list",
        description="Operators log in to the dashboard with a user name and password (or the "
                    "API token). The users live in `dashboard-users` beside the API token file "
                    "(scrypt hashes, mode 0600); the running gateway picks changes up at once, "
                    "and removing a user or giving it a new password ends its sessions. The "
                    "password is asked twice on the terminal, or read from the first line of "
                    "stdin with --password-stdin; it is never an argument (it would show in "
                    "the process list and the shell's history).")
    user.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    user.add_argument("user_action", choices=("add", "remove", "list"))
    user.add_argument("user_name", nargs="?", metavar="NAME")
    user.add_argument("--password-stdin", action="store_true",
                      help="read the password from the first line of stdin")


def _load(path: str | None):
    if not path:
        raise UserError("gateway: --config FILE is required", exit_code=EXIT_INPUT)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(f"gateway: {exc}", hint=f"every key is described in {SAMPLE_PATH}",
                        exit_code=EXIT_INPUT) from exc


def run(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_action", None) == "send":
        return run_send(args)
    if getattr(args, "gateway_action", None) == "ota":
        return run_ota(args)
    if getattr(args, "gateway_action", None) == "replay":
        return run_replay(args)
    if getattr(args, "gateway_action", None) == "node":
        return run_node(args)
    if getattr(args, "gateway_action", None) == "user":
        return run_user(args)
    config = _load(args.config)
    configure_logging(config.gateway.log_level)
    from gateway.daemon import Gateway
    try:
        return Gateway(config, config_path=args.config).run()
    except SinkError as exc:
        raise UserError(f"gateway: {exc}", exit_code=EXIT_ERROR) from exc


def _read_patch(spec: str) -> dict:
    try:
        text = sys.stdin.read() if spec == "-" else (
            spec if spec.lstrip().startswith("{") else Path(spec).read_text())
        patch = json.loads(text)
    except OSError as exc:
        raise UserError(f"gateway send: cannot read {spec}: {exc.strerror}",
                        exit_code=EXIT_INPUT) from exc
    except ValueError as exc:
        raise UserError(f"gateway send: patch is not JSON: {exc}", exit_code=EXIT_INPUT) from exc
    if not isinstance(patch, dict):
        raise UserError("gateway send: the patch must be a JSON object", exit_code=EXIT_INPUT)
    return patch


def run_send(args: argparse.Namespace) -> int:
    from gateway.api import ApiError, message_builder, resolve_targets
    from gateway.downlink import parse_args, send_standalone
    from gateway.outbox import Outbox

    config = _load(args.send_config or args.config)
    words = list(args.words)
    body: dict = {}
    if args.group:
        body["group"] = args.group
    else:
        if not words:
            raise UserError("gateway send: give a NODE or --group G", exit_code=EXIT_INPUT)
        body["node"] = words.pop(0)
    if not words or words[0] not in ("config", "cmd"):
        raise UserError("gateway send: after the target comes `config PATCH.json --version N` "
                        "or `cmd NAME [key=value ...]`", exit_code=EXIT_INPUT)
    action = words.pop(0)
    try:
        if action == "config":
            if len(words) != 1 or args.cfg_version is None:
                raise ValueError("config needs exactly one PATCH (file, - or inline JSON) and "
                                 "--version N")
            body.update(config=_read_patch(words[0]), version=args.cfg_version)
        else:
            if not words:
                raise ValueError("cmd needs a command NAME")
            body.update(cmd=words[0], args=parse_args(words[1:]))
        kind, build = message_builder(body)
        build("gw-check")
    except ValueError as exc:
        raise UserError(f"gateway send: {exc}", exit_code=EXIT_INPUT) from exc
    import threading
    box = Outbox(config.outbox.path) if "group" in body else None
    try:
        targets = resolve_targets(box, threading.Lock(), body) if box else [body["node"]]
    except ApiError as exc:
        raise UserError(f"gateway send: {exc}", exit_code=EXIT_INPUT) from exc
    finally:
        if box is not None:
            box.close()
    timeout = args.timeout if args.timeout is not None else config.gateway.ack_timeout_s
    try:
        reports = send_standalone(config.mqtt, targets, build, kind=kind, timeout=timeout,
                                  retain=(kind == "config"))
    except OSError as exc:
        raise UserError(f"gateway send: broker {config.mqtt.host}:{config.mqtt.port}: "
                        f"{exc.strerror or exc}") from exc
    for r in reports:
        line = f"{r['node']:<24} {kind:<8} {r['result']}"
        ack = r.get("ack", {})
        if r["result"] == "failed":
            line += f": {ack.get('err', 'no reason given')}"
        extra = {k: v for k, v in ack.items() if k not in ("err", "cmd")}
        if extra:
            line += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        print(line)
    ok = sum(r["result"] == "ok" for r in reports)
    print(f"{ok} of {len(reports)} acknowledged ok")
    return EXIT_OK if ok == len(reports) else EXIT_ERROR


def run_ota(args: argparse.Namespace) -> int:
    from gateway.api import ApiError, resolve_targets
    from gateway.ota import Bundle, BundleError, Rollout, bar
    from gateway.outbox import Outbox

    config = _load(args.send_config or args.config)
    try:
        bundle = Bundle.read(args.bundle)
    except BundleError as exc:
        raise UserError(f"gateway ota: {exc}", exit_code=EXIT_INPUT) from exc
    if bool(args.nodes) == bool(args.group):
        raise UserError("gateway ota: give --nodes A,B or --group G", exit_code=EXIT_INPUT)
    if args.nodes:
        targets = [n for n in args.nodes.split(",") if n]
    else:
        import threading

        box = Outbox(config.outbox.path)
        try:
            targets = resolve_targets(box, threading.Lock(), {"group": args.group})
        except ApiError as exc:
            raise UserError(f"gateway ota: {exc}", exit_code=EXIT_INPUT) from exc
        finally:
            box.close()
    canary = args.canary if args.canary is not None else (1 if len(targets) >= 3 else 0)
    try:
        rollout = Rollout(config.mqtt, bundle, targets, canary=canary,
                          max_failed_pct=args.max_failed, parallel=args.parallel,
                          chunk=args.chunk, deadline_s=args.deadline,
                          ack_timeout=args.ack_timeout, timeout=args.timeout, force=args.force,
                          progress_file=config.outbox.path.parent / "ota.json")
    except ValueError as exc:
        raise UserError(f"gateway ota: {exc}", exit_code=EXIT_INPUT) from exc
    print(f"{bundle.version}: {len(bundle.data)} bytes in {rollout.updates[targets[0]].chunks} "
          f"chunks of {args.chunk} to {len(targets)} node(s)"
          + (f", {canary} canary first" if canary else ""), flush=True)
    tty = sys.stderr.isatty()
    shown: dict[str, str] = {}

    def progress(r: Rollout) -> None:
        lines = [bar(u) for u in r.progress_view()["nodes"]]
        if tty:
            sys.stderr.write("\x1b[%dA" % len(shown) if shown else "")
            sys.stderr.write("".join(f"\x1b[2K{line}\n" for line in lines))
            shown.update({str(i): line for i, line in enumerate(lines)})
        else:
            for u, line in zip(r.progress_view()["nodes"], lines):
                key = f"{u['state']}:{u['next'] * 10 // max(1, u['chunks'])}"
                if shown.get(u["node"]) != key:  # a line per tenth and per state
                    shown[u["node"]] = key
                    print(line, file=sys.stderr)
        sys.stderr.flush()

    try:
        reports = rollout.run(progress)
    except OSError as exc:
        raise UserError(f"gateway ota: broker {config.mqtt.host}:{config.mqtt.port}: "
                        f"{exc.strerror or exc}") from exc
    for r in reports:
        line = f"{r['node']:<24} {r['state']}"
        if r.get("error"):
            line += f": {r['error']}"
        if r.get("seconds") is not None:
            line += f"  ({r['seconds']} s)"
        print(line)
    if rollout.stopped:
        print(rollout.stopped)
    ok = sum(r["state"] == "done" for r in reports)
    print(f"{ok} of {len(reports)} nodes run {bundle.version}")
    return EXIT_OK if ok == len(reports) else EXIT_ERROR


def run_replay(args: argparse.Namespace) -> int:
    import datetime as dt

    from gateway.outbox import Outbox

    config = _load(args.send_config or args.config)
    if not config.outbox.path.exists():
        raise UserError(f"gateway replay: no outbox at {config.outbox.path}",
                        hint="the gateway creates it when it first runs", exit_code=EXIT_INPUT)
    box = Outbox(config.outbox.path)
    try:
        if not args.ids and not args.all:
            rows = box.dead_letters(max(1, args.limit), sink=args.sink or None)
            if not rows:
                print("no dead letters" + (f" for sink {args.sink}" if args.sink else ""))
                return EXIT_OK
            print(f"{'ID':>6}  {'WHEN (UTC)':<19}  {'SINK':<8} {'REASON':<13} {'ITEMS':>5}  "
                  f"{'REPLAYED':>8}  REPLY")
            for r in rows:
                when = dt.datetime.fromtimestamp(r["at"], dt.timezone.utc)
                reply = " ".join(str(r["reply"] or "").split())
                if r["status"] is not None:
                    reply = f"HTTP {r['status']}: {reply}"
                print(f"{r['id']:>6}  {when:%Y-%m-%d %H:%M:%S}  {r['sink']:<8} "
                      f"{r['reason']:<13} {len(json.loads(r['body'])):>5}  "
                      f"{r['replayed']:>8}  {reply[:60]}")
            return EXIT_OK
        ids = list(args.ids)
        if args.all:
            ids += box.dead_letter_ids(sink=args.sink or None, replayed=args.again)
        failed = 0
        for letter in dict.fromkeys(ids):
            try:
                sink, items = box.replay(letter, again=args.again,
                                         sinks=[c.name for c in config.sinks])
            except KeyError:
                print(f"{letter:>6}  no such dead letter")
                failed += 1
                continue
            except ValueError as exc:
                print(f"{letter:>6}  not replayed: {exc}")
                failed += 1
                continue
            print(f"{letter:>6}  {items} item(s) queued again for {sink}")
        if not ids:
            print("nothing to replay")
        return EXIT_OK if not failed else EXIT_ERROR
    except SinkError as exc:
        raise UserError(f"gateway replay: {exc}", exit_code=EXIT_ERROR) from exc
    finally:
        box.close()


def run_node(args: argparse.Namespace) -> int:
    """retire / reinstate / delete through the running gateway's API: the registry's cache
    lives in that process, so the change must be made there."""
    import urllib.error
    import urllib.request

    from gateway.api import token_path

    config = _load(args.send_config or args.config)
    if not config.api.enabled:
        raise UserError("gateway node: the gateway's API is off ([api] enabled = false)",
                        exit_code=EXIT_INPUT)
    token = config.api.token
    if not token:
        try:
            token = token_path(config).read_text().strip()
        except OSError as exc:
            raise UserError(f"gateway node: no API token: {exc}",
                            hint="the gateway writes it when it first runs",
                            exit_code=EXIT_INPUT) from exc
    host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::", "") else config.api.host
    port = config.api.port
    if not port and config.gateway.stats_file:  # a port chosen at start: the stats say which
        try:
            port = json.loads(Path(config.gateway.stats_file).read_text()).get("api_port") or 0
        except (OSError, ValueError):
            port = 0
    if not port:
        raise UserError("gateway node: [api] port = 0 and no api_port in the stats file: is "
                        "the gateway running?", exit_code=EXIT_ERROR)
    url = f"http://{host}:{port}/api/nodes/{args.node_id}"
    if args.node_action == "delete":
        request = urllib.request.Request(url, method="DELETE")
    else:
        body = {"note": args.note} if args.node_action == "retire" and args.note else {}
        request = urllib.request.Request(f"{url}/{args.node_action}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            error = exc.reason
        raise UserError(f"gateway node {args.node_action} {args.node_id}: {error}",
                        exit_code=EXIT_ERROR) from exc
    except OSError as exc:
        raise UserError(f"gateway node: cannot reach the gateway's API at {url}: {exc}",
                        hint="is the gateway running?", exit_code=EXIT_ERROR) from exc
    if args.node_action == "delete":
        print(f"{args.node_id}: deleted")
    elif args.node_action == "retire":
        print(f"{args.node_id}: " + ("retired" if answer.get("changed") else
                                     "was retired already") +
              (f" ({answer['retired_note']})" if answer.get("retired_note") else ""))
    else:
        print(f"{args.node_id}: " + ("back in service" if answer.get("changed") else
                                     "was not retired"))
    return EXIT_OK


def run_user(args: argparse.Namespace) -> int:
    """add / remove / list the dashboard's users (gateway/users.py), in their file."""
    import getpass
    import time

    from gateway.users import Users, UsersError, users_path

    config = _load(args.send_config or args.config)
    users = Users(users_path(config))
    try:
        if args.user_action == "list":
            info = users.info()
            for name, entry in info.items():
                created = entry.get("created")
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) \
                    if isinstance(created, (int, float)) else "-"
                print(f"{name:<32}  added {when}")
            if not info:
                print(f"no users in {users.path} (log in with the API token, or "
                      f"`meterlink gateway user add NAME`)")
            return EXIT_OK
        if not args.user_name:
            raise UserError(f"gateway user {args.user_action}: NAME is required",
                            exit_code=EXIT_INPUT)
        if args.user_action == "remove":
            users.remove(args.user_name)
            print(f"{args.user_name}: removed (its sessions have ended)")
            return EXIT_OK
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = getpass.getpass(f"password for {args.user_name}: ")
            if getpass.getpass("again: ") != password:
                raise UserError("gateway user add: the two passwords differ",
                                exit_code=EXIT_INPUT)
        new = users.add(args.user_name, password)
        print(f"{args.user_name}: " + ("added" if new else
                                       "new password (its sessions have ended)"))
        return EXIT_OK
    except UsersError as exc:
        raise UserError(f"gateway user {args.user_action}: {exc}",
                        exit_code=EXIT_INPUT) from exc
    except OSError as exc:
        raise UserError(f"gateway user {args.user_action}: {users.path}: {exc}",
                        exit_code=EXIT_ERROR) from exc
