"""The warm feddat worker of a SuperNode: one long-lived process per node that answers the
node's messages, so that a message costs about what its training costs.

Since Flower 1.21 every message gets a fresh `flwr-clientapp` process; importing torch and
building the backbone and the client's data took ~85 % of a Flower run's time (docs/design.md §9).
So the ClientApp (client_app.py) stays light (flwr and the standard library) and forwards
each message over a Unix socket to this worker, which keeps the models and data of the run
in memory (client_node.Nodes) and runs the same handlers the ClientApp would run itself.

Wire format, both ways, no pickle: frames of a 4-byte big-endian length and a payload. A
request is a JSON header, the Message and the Context as Flower's own protobuf; a reply is a
JSON header and the reply Message's protobuf, or a JSON header carrying the error.

The socket is reachable only by the node's user: it lives in a directory of mode 0700, is
itself 0600, and every connection's peer uid is checked. A crashed worker is reported by the
ClientApp (the message fails with the socket named and the command that starts a worker),
never waited on forever: the ClientApp waits at most flower.round_timeout for a reply.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

PROTOCOL = 1
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes on Linux


class WorkerError(RuntimeError):
    """The worker cannot be reached or did not answer; the message names its socket."""


class Stopped(BaseException):
    """SIGTERM or SIGINT: the worker leaves its loop and removes its socket, also mid-message
    (a BaseException: the handlers' `except Exception` must not take it for a failed message)."""


def start_hint(path: str | Path) -> str:
    return f"start one on this host with `feddat flower worker --socket {path}` (docs/guide/flower.md)"


# ---- frames ------------------------------------------------------------------------------


def send_frames(conn: socket.socket, *payloads: bytes) -> None:
    conn.sendall(b"".join(struct.pack(">I", len(p)) + p for p in payloads))


def recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed with {left} of {n} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_frame(conn: socket.socket) -> bytes:
    (size,) = struct.unpack(">I", recv_exact(conn, 4))
    return recv_exact(conn, size)


# ---- the ClientApp's side ----------------------------------------------------------------


def ask(path: str | Path, msg: Message, context: Context, timeout: float) -> Message:
    """Have the worker at `path` answer `msg`; -> its reply, addressed as a reply to `msg`."""
    kind = msg.metadata.message_type
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise WorkerError(f"no feddat worker listens on {path} ({err.strerror}); {start_hint(path)}") from err
        header = json.dumps({"protocol": PROTOCOL, "kind": "request"}).encode()
        send_frames(conn, header, message_to_proto(msg).SerializeToString(), context_to_proto(context).SerializeToString())
        answer = json.loads(recv_frame(conn))
        if answer.get("kind") == "error":
            raise WorkerError(f"the feddat worker at {path} failed on this {kind} message: {answer['error']}")
        proto = ProtoMessage()
        proto.ParseFromString(recv_frame(conn))
    except socket.timeout as err:
        raise WorkerError(f"the feddat worker at {path} did not answer a {kind} message within {timeout:.0f}s (flower.round_timeout)") from err
    except (EOFError, ConnectionResetError, BrokenPipeError) as err:
        raise WorkerError(f"the feddat worker at {path} stopped while answering a {kind} message ({err}); see its log, or {start_hint(path)}") from err
    finally:
        conn.close()
    return Message(message_from_proto(proto).content, reply_to=msg)


# ---- the worker's side -------------------------------------------------------------------


def listen(path: Path) -> socket.socket:
    """A Unix socket at `path` that only this user can reach; a stale socket is replaced."""
    if len(str(path)) > MAX_SOCKET_PATH:
        raise WorkerError(f"socket path {path} is {len(str(path))} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}: choose a shorter one")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a worker that was killed
        else:
            raise WorkerError(f"a feddat worker already listens on {path}")
        finally:
            probe.close()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        server.bind(str(path))
    finally:
        os.umask(old)
    server.listen(8)
    return server


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def answer_one(conn: socket.socket, log) -> None:
    """Read one request from `conn`, answer it (or say why not)."""
    from feddat.engines.flower import client_node  # torch, feddat and the models: loaded once

    if peer_uid(conn) != os.getuid():
        send_frames(conn, json.dumps({"kind": "error", "error": "connection from another user refused"}).encode())
        return
    header = json.loads(recv_frame(conn))
    if header.get("protocol") != PROTOCOL:
        send_frames(conn, json.dumps({"kind": "error", "error": f"protocol {header.get('protocol')} != {PROTOCOL}: the ClientApp and the worker run different feddat versions"}).encode())
        return
    msg_proto, ctx_proto = ProtoMessage(), ProtoContext()
    msg_proto.ParseFromString(recv_frame(conn))
    ctx_proto.ParseFromString(recv_frame(conn))
    msg, context = message_from_proto(msg_proto), context_from_proto(ctx_proto)
    t0 = time.perf_counter()
    try:
        out = client_node.handle(msg, context)
    except Exception as err:  # noqa: BLE001 - the message fails, the worker stays up for the next one
        log(traceback.format_exc())
        send_frames(conn, json.dumps({"kind": "error", "error": f"{type(err).__name__}: {err}"}).encode())
        return
    send_frames(conn, json.dumps({"kind": "reply"}).encode(), message_to_proto(out).SerializeToString())
    log(f"{time.strftime('%H:%M:%S')} run {context.run_id}: {msg.metadata.message_type} answered in {time.perf_counter() - t0:.2f}s")


def serve(path: str | Path, log=lambda s: print(s, flush=True)) -> None:
    """Answer requests on `path` until SIGTERM or SIGINT; the socket is removed on the way out."""
    from feddat.engines.flower import client_node

    client_node.warm_up()  # torch, feddat and transformers load now, not on the first message
    path = Path(path).resolve()
    server = listen(path)

    def stop(signum, frame):
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"feddat worker (pid {os.getpid()}) listening on {path}")
    try:
        while True:
            conn, _ = server.accept()
            with conn:
                try:
                    answer_one(conn, log)
                except (EOFError, OSError, ValueError) as err:  # a ClientApp that went away mid-request
                    log(f"request dropped: {err}")
    except Stopped:
        pass
    finally:
        server.close()
        path.unlink(missing_ok=True)
        log("feddat worker stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feddat flower worker", description="The warm feddat worker of one SuperNode (engines/flower/worker.py).")
    parser.add_argument("--socket", required=True, metavar="PATH", help="Unix socket to listen on; give the same path to the SuperNode as --node-config 'worker=\"PATH\"'")
    args = parser.parse_args(argv)
    try:
        serve(args.socket)
    except WorkerError as err:
        print(f"feddat: worker: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
