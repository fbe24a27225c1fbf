"""A QuickFIX peer for the interoperability tests, run as a subprocess with a time limit.

    python tests/fix_quickfix_peer.py acceptor --port P --dir D [--begin FIX.4.4]
    python tests/fix_quickfix_peer.py initiator --port P --dir D [--begin FIX.4.4]
    ... --tls --ca CA.pem --cert C.pem --key K.pem [--verify-level 1]

With --tls it runs QuickFIX's SSLSocketAcceptor / SSLSocketInitiator (which need a quickfix
built with HAVE_SSL, as dev.sh builds it): --cert/--key are the acceptor's server certificate
or the initiator's client certificate; --ca checks the other side's, and the acceptor
requires one when --verify-level is 1.

It prints one JSON object a line for what QuickFIX sees (logon, every message in and out
with MsgSeqNum and PossDupFlag, logout). Acceptor: answers each NewOrderSingle with an
ExecutionReport New and a Fill; before answering a ClOrdID starting "GAP" it skips 3
sequence numbers (a forced gap the other side must request). Initiator: sends O1, then
skips 3 numbers and sends GAP2, then logs out once it has received ``--expect`` execution
reports (or after ``--seconds``).
"""

import argparse
import ctypes
import faulthandler
import itertools
import json
import os
import sys
import threading
import time

import quickfix as fix

faulthandler.enable()

_print_lock = threading.Lock()


def emit(**record):
    with _print_lock:
        print(json.dumps(record), flush=True)


def header(msg, tag):
    hdr = msg.getHeader()
    return hdr.getField(tag) if hdr.isSetField(tag) else None


def describe(msg):
    return {
        "type": header(msg, 35),
        "seq": int(header(msg, 34)),
        "possdup": header(msg, 43) == "Y",
        "fields": {str(t): msg.getField(t) for t in (11, 36, 7, 16, 123, 150, 39, 14, 58)
                   if msg.isSetField(t)},
    }


class Peer(fix.Application):
    def __init__(self, role, expect):
        super().__init__()
        self.role = role
        self.expect = expect
        self.reports = 0
        self.logged_on = threading.Event()
        self.done = threading.Event()
        self.session_id = None
        self.logged_on_now = False
        self.exec_ids = itertools.count(1)

    def onCreate(self, sid):
        self.session_id = sid

    def onLogon(self, sid):
        emit(event="logon")
        self.logged_on_now = True
        self.logged_on.set()

    def onLogout(self, sid):
        self.logged_on_now = False
        emit(event="logout")

    def toAdmin(self, msg, sid):
        emit(event="out", **describe(msg))

    def fromAdmin(self, msg, sid):
        emit(event="in", **describe(msg))

    def toApp(self, msg, sid):
        emit(event="out", **describe(msg))

    def fromApp(self, msg, sid):
        emit(event="in", **describe(msg))
        msg_type = header(msg, 35)
        if msg_type == "D" and self.role == "acceptor":
            cl_ord_id = msg.getField(11)
            if cl_ord_id.startswith("GAP"):
                session = fix.Session.lookupSession(sid)
                session.setNextSenderMsgSeqNum(session.getExpectedSenderNum() + 3)
            qty = msg.getField(38)
            self.report(sid, msg, "0", "0", "0", qty)
            self.report(sid, msg, "F", "2", qty, "0", last=(qty, msg.getField(44)))
        elif msg_type == "8":
            self.reports += 1
            if self.reports >= self.expect:
                self.done.set()

    def report(self, sid, order, exec_type, status, cum, leaves, last=None):
        er = fix.Message()
        er.getHeader().setField(fix.MsgType("8"))
        px = order.getField(44) if order.isSetField(44) else "0"
        values = [(37, "QF" + order.getField(11)), (11, order.getField(11)),
                  (17, f"QE{next(self.exec_ids)}"), (150, exec_type), (39, status),
                  (55, order.getField(55)), (54, order.getField(54)), (151, leaves),
                  (14, cum), (6, px if last else "0")]
        if sid.getBeginString().getValue() == "FIX.4.2":
            values.append((20, "0"))
            if exec_type == "F":
                values[3] = (150, "2")
        if last:
            values += [(32, last[0]), (31, last[1])]
        for tag, value in values:
            er.setField(fix.StringField(tag, value))
        fix.Session.sendToTarget(er, sid)

    def send_order(self, cl_ord_id, gap=False):
        session = fix.Session.lookupSession(self.session_id)
        if gap:
            session.setNextSenderMsgSeqNum(session.getExpectedSenderNum() + 3)
        msg = fix.Message()
        msg.getHeader().setField(fix.MsgType("D"))
        values = [(11, cl_ord_id), (21, "1"), (55, "AAPL"), (54, "1"),
                  (60, time.strftime("%Y%m%d-%H:%M:%S", time.gmtime())), (38, "10"),
                  (40, "2"), (44, "101.5")]
        for tag, value in values:
            msg.setField(fix.StringField(tag, value))
        fix.Session.sendToTarget(msg, self.session_id)


def tls_settings(args):
    """QuickFIX C++'s SSL keys; it reads them from [DEFAULT] only (settings.get() in
    UtilitySSL.cpp), never from a [SESSION]."""
    if not args.tls:
        return []
    role = "Server" if args.role == "acceptor" else "Client"
    lines = [f"CertificationAuthoritiesFile={args.ca}"]
    if args.cert:
        lines += [f"{role}CertificateFile={args.cert}", f"{role}CertificateKeyFile={args.key}"]
    if args.verify_level is not None:
        lines.append(f"CertificateVerifyLevel={args.verify_level}")
    return lines


def settings_text(args):
    spec = os.path.join(sys.prefix, "share", "quickfix", args.begin.replace(".", "") + ".xml")
    lines = [
        "[DEFAULT]",
        f"ConnectionType={args.role}",
        f"FileStorePath={os.path.join(args.dir, 'store')}",
        "StartTime=00:00:00",
        "EndTime=00:00:00",
        "UseDataDictionary=Y",
        f"DataDictionary={spec}",
        "HeartBtInt=30",
        "ReconnectInterval=1",
        "ResetOnLogon=Y",
        *tls_settings(args),
        "[SESSION]",
        f"BeginString={args.begin}",
    ]
    if args.role == "acceptor":
        lines += ["SenderCompID=QFX", "TargetCompID=ALW", f"SocketAcceptPort={args.port}",
                  "SocketAcceptAddress=127.0.0.1"]
    else:
        lines += ["SenderCompID=QFX", "TargetCompID=ALW", "SocketConnectHost=127.0.0.1",
                  f"SocketConnectPort={args.port}"]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("acceptor", "initiator"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--begin", default="FIX.4.4")
    parser.add_argument("--expect", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--verify-level", type=int, choices=(0, 1, 2))
    args = parser.parse_args()
    if args.tls and (not args.ca or bool(args.cert) != bool(args.key)):
        parser.error("--tls needs --ca, and --cert with --key")
    if args.tls and args.role == "acceptor" and not args.cert:
        parser.error("a TLS acceptor needs --cert and --key")
    os.makedirs(args.dir, exist_ok=True)
    cfg = os.path.join(args.dir, f"{args.role}.cfg")
    with open(cfg, "w") as f:
        f.write(settings_text(args))
    app = Peer(args.role, args.expect)
    settings = fix.SessionSettings(cfg)
    store = fix.FileStoreFactory(settings)
    log = fix.ScreenLogFactory(False, False, False)
    engines = {("acceptor", False): fix.SocketAcceptor, ("initiator", False): fix.SocketInitiator,
               ("acceptor", True): fix.SSLSocketAcceptor,
               ("initiator", True): fix.SSLSocketInitiator}
    engine = engines[args.role, args.tls](app, store, settings, log)
    engine.start()
    emit(event="started")
    deadline = time.monotonic() + args.seconds
    try:
        if args.role == "initiator":
            if not app.logged_on.wait(max(0.0, deadline - time.monotonic())):
                emit(event="error", text="no logon")
                return 1
            app.send_order("O1")
            time.sleep(0.3)
            app.send_order("GAP2", gap=True)
            app.done.wait(max(0.0, deadline - time.monotonic()))
            time.sleep(0.3)  # let the last answers arrive before the logout
        else:
            # Runs until the test closes stdin (or the time limit).
            stop = threading.Event()
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
            stop.wait(max(0.0, deadline - time.monotonic()))
    finally:
        if args.role == "initiator" or app.logged_on_now:
            engine.stop()
        # else: the counterparty logged out already, and there is nothing left to stop. Here
        # QuickFIX 1.16's Acceptor::stop() races its own engine thread: it sets m_stop, then
        # closes m_pServer from this thread while the engine thread, woken by the disconnect
        # and seeing m_stop, closes and deletes that same m_pServer (SocketAcceptor::onStart;
        # SSLSocketAcceptor has the same code), with no lock: a use-after-free in
        # SocketServer::close() (a core dump shows it; 2 crashes in 20 stops right after logout).
        emit(event="stopped")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # QuickFIX's SSL layer printf()s each certificate check ("Certificate Verification: ..."),
    # which the tests read: push out C's buffer too, as _exit will not.
    ctypes.CDLL(None).fflush(None)
    # The binding can crash while tearing down engine threads at interpreter exit (after a
    # clean stop): leave without running destructors.
    os._exit(code)
