"""A real oslo.messaging peer for nova-rs's interop tests.

    peer.py server URL EXCHANGE TOPIC SERVER [--durable] [--quorum] [--modern]
        Serve an endpoint on TOPIC (and TOPIC.SERVER, and the fanout queue)
        with the rabbit driver; print "READY" once consuming. Runs until
        its standard input closes.

    peer.py client URL EXCHANGE [--durable] [--quorum] [--modern]
        Read one JSON request per line from standard input, make it with an
        RPCClient, and print one JSON answer per line:
        {"op": "call"|"cast", "topic", "method", "args", "server", "fanout",
         "namespace", "version", "timeout", "context"} ->
        {"ok": result} or {"error": {"class", "exc_type", "message"}}.

        peer.py notifier URL EXCHANGE [--driver=messaging] [--modern]
        Read one JSON notification per line from standard input and send it
        with an oslo Notifier: {"topic", "publisher_id", "priority",
        "event_type", "payload"} -> {"ok": null}.

    peer.py listener URL EXCHANGE TOPIC [--pool=NAME] [--modern]
        A NotificationListener on TOPIC with an endpoint for every priority;
        prints "READY", then one JSON line per notification with what oslo
        hands the endpoint: {"priority", "ctxt", "publisher_id",
        "event_type", "payload", "metadata"}.

--compute-1.0 serves, instead of the test endpoint, a compute host still
    at the compute API 1.0 (prints "PLACED <task_id>" for each run_task).

    --modern sets what OpenStack deployments set today: rabbit_quorum_queue,
    rabbit_transient_quorum_queue, rabbit_stream_fanout (with
    rabbit_qos_prefetch_count = 10) and use_queue_manager.
"""

import json
import os
import sys
import tempfile
import threading
import time

import oslo_messaging
from oslo_config import cfg
from oslo_messaging._drivers import amqp, impl_rabbit


def transport_for(url, exchange, flags, notifications=False):
    conf = cfg.CONF
    conf([], project="nova-rs-interop")
    oslo_messaging.set_transport_defaults(control_exchange=exchange)
    group = "oslo_messaging_rabbit"
    conf.register_opts(impl_rabbit.rabbit_opts, group=group)
    conf.register_opts(amqp.amqp_opts, group=group)
    conf.set_override("amqp_durable_queues", "--durable" in flags, group=group)
    conf.set_override("rabbit_quorum_queue", "--quorum" in flags or "--modern" in flags, group=group)
    if "--modern" in flags:
        conf.set_override("rabbit_transient_quorum_queue", True, group=group)
        conf.set_override("rabbit_stream_fanout", True, group=group)
        conf.set_override("rabbit_qos_prefetch_count", 10, group=group)
        conf.set_override("use_queue_manager", True, group=group)
        # Each peer is its own service (tests.interop starts it in a process
        # group of its own, as a service manager would): its own name.
        conf.set_override("processname", f"peer-{os.getpid()}", group=group)
        # oslo's queue manager takes an oslo.concurrency file lock.
        from oslo_concurrency import lockutils
        lockutils.set_defaults(os.path.join(tempfile.gettempdir(), "nova-rs-interop-locks"))
    if notifications:
        return conf, oslo_messaging.get_notification_transport(conf, url=url)
    return conf, oslo_messaging.get_rpc_transport(conf, url=url)


def flag_value(flags, name):
    for f in flags:
        if f.startswith(name + "="):
            return f.split("=", 1)[1]
    return None


def notifier(url, exchange, flags):
    conf, transport = transport_for(url, exchange, flags, notifications=True)
    driver = flag_value(flags, "--driver") or "messagingv2"
    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        n = json.loads(line)
        sender = oslo_messaging.Notifier(transport, publisher_id=n["publisher_id"],
                                         driver=driver, topics=[n["topic"]])
        getattr(sender, n["priority"].lower())({}, n["event_type"], n["payload"])
        print(json.dumps({"ok": None}), flush=True)
    transport.cleanup()


class Printer:
    """An endpoint for every priority: prints what oslo hands it."""

    def __init__(self):
        self.lock = threading.Lock()

    def __getattr__(self, priority):
        if priority not in ("audit", "debug", "info", "warn", "error", "critical", "sample"):
            raise AttributeError(priority)

        def endpoint(ctxt, publisher_id, event_type, payload, metadata):
            with self.lock:
                print(json.dumps({"priority": priority.upper(), "ctxt": ctxt,
                                  "publisher_id": publisher_id, "event_type": event_type,
                                  "payload": payload, "metadata": metadata}), flush=True)
            return oslo_messaging.NotificationResult.HANDLED
        return endpoint


def listener(url, exchange, topic, flags):
    conf, transport = transport_for(url, exchange, flags, notifications=True)
    targets = [oslo_messaging.Target(topic=topic)]
    server = oslo_messaging.get_notification_listener(
        transport, targets, [Printer()], executor="threading", pool=flag_value(flags, "--pool"))
    server.start()
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()
    server.wait()
    transport.cleanup()


class Endpoint:
    """The Python service's API (version 1.3, default namespace)."""

    target = oslo_messaging.Target(version="1.3")

    def __init__(self, name, transport=None):
        self.name = name
        self.transport = transport
        self.casts = []
        self.lock = threading.Lock()

    def echo(self, ctxt, **kwargs):
        return {"server": self.name, "args": kwargs,
                "request_id": ctxt.get("request_id"),
                "context": ctxt}

    def fail(self, ctxt, message):
        raise ValueError(message)

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return {"server": self.name, "slept": seconds}

    def record(self, ctxt, value):
        with self.lock:
            self.casts.append(value)

    def relay(self, ctxt, topic, method, args):
        """Call another service with the same context (keys pass through)."""
        target = oslo_messaging.Target(topic=topic)
        client = oslo_messaging.get_rpc_client(self.transport, target, timeout=10)
        return client.call(ctxt, method, **args)

    def recorded(self, ctxt):
        with self.lock:
            return list(self.casts)


class Compute10:
    """A compute host still at the compute API 1.0: it has no submit_task,
    and refuses anything sent above 1.0 (oslo's UnsupportedVersion)."""

    target = oslo_messaging.Target(version="1.0")

    def __init__(self):
        self.lock = threading.Lock()
        self.placed = []

    def run_task(self, ctxt, name, task_id, args=None, notify=None, callback_url=None):
        with self.lock:
            self.placed.append(task_id)
        print(f"PLACED {task_id}", flush=True)
        return {"started": True, "reason": None}

    def report_capacity(self, ctxt):
        return None

    def placed_tasks(self, ctxt):
        with self.lock:
            return list(self.placed)


def serve(url, exchange, topic, server, flags):
    conf, transport = transport_for(url, exchange, flags)
    target = oslo_messaging.Target(topic=topic, server=server)
    endpoint = Compute10() if "--compute-1.0" in flags else Endpoint(server, transport)
    rpc = oslo_messaging.get_rpc_server(transport, target, [endpoint], executor="threading")
    rpc.start()
    print("READY", flush=True)
    sys.stdin.read()
    rpc.stop()
    rpc.wait()
    transport.cleanup()


def answer(client_base, req):
    kw = {}
    for key in ("server", "namespace", "version", "timeout", "fanout"):
        if req.get(key) is not None:
            kw[key] = req[key]
    if req.get("call_monitor_timeout") is not None:
        kw["call_monitor_timeout"] = req["call_monitor_timeout"]
    client = client_base.prepare(topic=req["topic"], **kw)
    ctxt = req.get("context") or {}
    try:
        if req["op"] == "call":
            return {"ok": client.call(ctxt, req["method"], **req.get("args", {}))}
        client.cast(ctxt, req["method"], **req.get("args", {}))
        return {"ok": None}
    except oslo_messaging.RemoteError as e:
        return {"error": {"class": "RemoteError", "exc_type": e.exc_type,
                          "message": e.value}}
    except Exception as e:  # noqa: BLE001 - reported to the test as data
        return {"error": {"class": type(e).__name__, "exc_type": None,
                          "message": str(e)}}


def client(url, exchange, flags):
    conf, transport = transport_for(url, exchange, flags)
    base = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="unused"), timeout=10)
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(answer(base, json.loads(line))), flush=True)
    transport.cleanup()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    flags = [a for a in args if a.startswith("--")]
    pos = [a for a in args if not a.startswith("--")]
    if mode == "server":
        serve(*pos, flags)
    elif mode == "notifier":
        notifier(*pos, flags)
    elif mode == "listener":
        listener(*pos, flags)
    else:
        client(*pos, flags)
