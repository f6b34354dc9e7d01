#!/usr/bin/env python3
"""Holds many idle HTTP/1.1 client connections open, for load-tests/idle-memory.sh.

Opens N TCP connections to HOST:PORT and leaves them idle, in one of two modes:
  open       connect, send nothing
  keepalive  connect, send one `GET PATH` (Connection: keep-alive), read the whole 200
             answer, then leave the connection idle
Connections are opened one after the other (keepalive: one request in flight at a time, so
the proxy needs a single upstream connection, not one per client connection).

Protocol (one line each, stdout; commands on stdin):
  READY {json}     all N connections are open (keepalive: each got its 200)
  stdin "check"  -> CHECK {json}: every connection is peeked without blocking (still open,
                    nothing unexpected received?), then a sample of them (--check, spread
                    evenly, first and last included) each sends one more GET and must get
                    200 with a body; those stay open, idle again
  stdin "close" or end of input -> every connection is closed with an RST (SO_LINGER 0:
                    no TIME_WAIT left behind), prints CLOSED {json} and exits
  ERROR {json}     something failed (exit status 1)

Python 3.11 standard library only. Raises its own RLIMIT_NOFILE (soft up to hard; as root
also the hard limit) to fit N connections.
"""

import argparse
import errno
import json
import resource
import socket
import struct
import sys
import time


def out(tag, obj):
    sys.stdout.write(f"{tag} {json.dumps(obj, separators=(',', ':'))}\n")
    sys.stdout.flush()


def fail(msg, **extra):
    out("ERROR", {"error": msg, **extra})
    sys.exit(1)


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard != resource.RLIM_INFINITY and hard < need:
        try:  # root may raise the hard limit (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return need
        except (ValueError, OSError):
            pass
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < need:
        fail(f"RLIMIT_NOFILE hard limit {hard} < {need} needed (raise `ulimit -Hn`)")
    return new


def read_response(sock, buf=b""):
    """Reads one HTTP/1.1 response with Content-Length (or none: empty body). Returns
    (status, body, leftover)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head was complete")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ConnectionError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        n = name.strip().lower()
        if n == b"content-length":
            length = int(value.strip())
        elif n == b"transfer-encoding":
            raise ConnectionError("chunked responses are not supported by this client")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body was complete")
        rest += chunk
    return status, rest[:length], rest[length:]


def get(sock, request):
    sock.sendall(request)
    status, body, leftover = read_response(sock)
    if leftover:
        raise ConnectionError(f"{len(leftover)} unexpected bytes after the response")
    return status, body


def peek_state(sock):
    """'open' (nothing to read, not closed), 'eof', 'reset' or 'data' (unsolicited bytes,
    e.g. a 408 the server sent before closing)."""
    timeout = sock.gettimeout()
    # With a timeout set, Python polls for readability before recv (up to the timeout), even
    # with MSG_DONTWAIT: peek in non-blocking mode instead.
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return "open"
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        return f"error:{errno.errorcode.get(e.errno, e.errno)}"
    finally:
        sock.settimeout(timeout)
    return "data" if data else "eof"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, required=True, help="connections to hold open")
    ap.add_argument("--mode", choices=["open", "keepalive"], required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--check", type=int, default=200, help="connections that send a GET on `check`")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per connect / response")
    args = ap.parse_args()
    if args.n < 1:
        fail("--n must be >= 1")

    limit = raise_nofile(args.n + 64)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               "User-Agent: idle_client\r\nConnection: keep-alive\r\n\r\n").encode()
    rst = struct.pack("ii", 1, 0)
    socks = []

    t0 = time.monotonic()
    for i in range(args.n):
        try:
            s = socket.create_connection((args.host, args.port), timeout=args.timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
            if args.mode == "keepalive":
                status, body = get(s, request)
                if status != 200 or not body:
                    fail(f"connection {i}: answered {status} with {len(body)} body bytes", opened=i)
        except (OSError, ConnectionError, ValueError) as e:
            fail(f"connection {i}: {e!r}", opened=len(socks))
    out("READY", {"n": len(socks), "mode": args.mode, "secs": round(time.monotonic() - t0, 3),
                  "rlimit_nofile": limit})

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "check":
            states = {}
            for s in socks:
                st = peek_state(s)
                states[st] = states.get(st, 0) + 1
            k = max(1, min(args.check, len(socks)))
            idx = sorted({round(j * (len(socks) - 1) / max(1, k - 1)) for j in range(k)})
            ok, bad = 0, []
            for i in idx:
                try:
                    socks[i].settimeout(args.timeout)
                    status, body = get(socks[i], request)
                    if status == 200 and body:
                        ok += 1
                    else:
                        bad.append(f"#{i}: {status}")
                except (OSError, ConnectionError, ValueError) as e:
                    bad.append(f"#{i}: {e!r}")
            out("CHECK", {"n": len(socks), "open": states.get("open", 0), "states": states,
                          "sample": len(idx), "sample_ok": ok, "sample_failures": bad[:5]})
        elif cmd == "close":
            break
        elif cmd:
            out("ERROR", {"error": f"unknown command {cmd!r}"})

    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
        except OSError:
            pass
        s.close()
    out("CLOSED", {"n": len(socks)})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
