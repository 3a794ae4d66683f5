"""`streamd simulate`: run the simulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import errno
import math
import signal
import sys
import threading
from types import FrameType

from streamd.reasons import ExitCode
from streamd.simulator.config import (
    CONNECTIONS_API_MODES,
    TERMINATE_ENDINGS,
    TIERS,
    TIMELINE_STARTS,
    SimulatorConfig,
)
from streamd.simulator.server import Simulator


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's wrapping, except for the `examples:` epilog, printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamd simulate",
        description="Serve a local X API v2 filtered stream (rules + stream endpoints).",
        formatter_class=_HelpFormatter,
        epilog="examples:\n"
               "  streamd simulate\n"
               "      http://127.0.0.1:8080, token test-token, 50 tweets/s, Pro tier limits\n"
               "  streamd simulate --rule 'cat has:images:cats' --rule-propagation-delay 0\n"
               "      a rule already on the App; rule changes reach the stream at once\n"
               "  streamd simulate --port 0 --rate inf --heartbeat 1 --seed 7\n"
               "      a free port, tweets as fast as possible, the same tweets every run",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080,
                        help="port to listen on (default: %(default)s; 0 picks a free port)")
    parser.add_argument("--token", action="append", dest="tokens", metavar="TOKEN",
                        help="valid app-only bearer token (repeatable; default test-token)")
    parser.add_argument("--tier", choices=sorted(TIERS), default="pro",
                        help="the App's access level: stream access, connections, rule cap"
                             " and length (default: %(default)s; free/basic get 403)")
    parser.add_argument("--rate", default="50", metavar="TWEETS_PER_SECOND",
                        help="tweets generated per second (default: %(default)s; 'inf' for"
                             " as fast as possible)")
    parser.add_argument("--total", type=int, default=None,
                        help="stop generating after N tweets (default: no end)")
    parser.add_argument("--heartbeat", type=float, default=20.0, metavar="SECONDS",
                        help="seconds between keep-alive newlines on an open stream (default:"
                             " %(default)g, as X)")
    parser.add_argument("--policy", choices=("reject_new", "kick_old"), default="reject_new",
                        help="a connect past the tier's connections: refused with 429"
                             " TooManyConnections, as X, or the oldest is dropped (default:"
                             " %(default)s)")
    parser.add_argument("--usage-cap", type=int, default=None, metavar="TWEETS",
                        help="after this many tweets the stream answers usage-capped"
                             " (default: no cap)")
    parser.add_argument("--gzip", action="store_true", help="gzip when the client accepts it")
    parser.add_argument("--replay", metavar="FILE", help="NDJSON payloads to replay")
    parser.add_argument("--scenario", metavar="FILE", help="JSON/TOML scenario of timed faults")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the generated tweets: the same seed, the same tweets"
                             " (default: %(default)s)")
    parser.add_argument("--match-all", action="store_true",
                        help="every generated tweet matches every rule")
    parser.add_argument("--rule", action="append", default=[], metavar="VALUE[:TAG]",
                        help="preload a rule (repeatable); the tag follows the last ':'"
                             " only when what follows contains no space")
    parser.add_argument("--problem-host", default="api.twitter.com",
                        choices=("api.twitter.com", "api.x.com"),
                        help="host of the problem `type` URIs in error bodies (default:"
                             " %(default)s, as X still sends)")
    parser.add_argument("--rule-propagation-delay", type=float, default=20.0,
                        metavar="SECONDS",
                        help="how long a rule change takes to reach open streams (default"
                             " 20, as X); --rule preloads are in force from the start")
    conns = parser.add_argument_group(
        "Connections",
        "X's Connections API (GET/DELETE /2/connections) and stale slots: a client that"
        " goes away without the server ending its stream (e.g. SIGKILLed) leaves a zombie"
        " connection that keeps its slot for a while, as X does.",
    )
    conns.add_argument("--connection-limit", type=int, default=None, metavar="N",
                       help="connection slots (default: the tier's, pro 1, enterprise 2)")
    conns.add_argument("--zombie-seconds", type=float, default=0.0, metavar="SECONDS",
                       help="how long a vanished client's connection keeps its slot"
                            " (default: %(default)s, freed at once)")
    conns.add_argument("--terminate-ending", choices=TERMINATE_ENDINGS,
                       default="operational_disconnect",
                       help="how a stream terminated through the Connections API ends"
                            " (default: %(default)s: a ForceDisconnect message, then the"
                            " end of the body)")
    conns.add_argument("--connections-api", choices=CONNECTIONS_API_MODES, default="on",
                       help="serve the Connections API, refuse it with 403, or answer 404"
                            " (default: %(default)s)")
    timeline = parser.add_argument_group(
        "Timeline, recovery and partitions",
        "Tweets exist whether or not a client is connected; POST /_simulator/advance"
        ' {"seconds": S} makes S seconds pass at once. Recovery (start_time/end_time) and'
        " the firehose, sample and sample10 endpoints follow X's Enterprise rules.",
    )
    timeline.add_argument("--timeline-start", choices=TIMELINE_STARTS,
                          default="first_connect",
                          help="when tweets start being created: at the first stream"
                               " connect (or advance), or at start-up (default:"
                               " %(default)s)")
    timeline.add_argument("--firehose-partitions", type=int, default=20, metavar="N",
                          help="partitions the firehose is split into, 1-20 (default:"
                               " %(default)s); a higher `partition` gets 400")
    timeline.add_argument("--recovery-rate", default="inf", metavar="TWEETS_PER_SECOND",
                          help="how fast a recovery stream sends its window (default:"
                               " %(default)s, as fast as the client reads)")
    tls = parser.add_argument_group(
        "TLS and HTTP/2",
        "X serves the stream over HTTPS with HTTP/2. With a certificate the simulator serves"
        " HTTPS (the URL names localhost for a loopback --host); a client trusts a private"
        " CA with SSL_CERT_FILE=<ca.pem>.",
    )
    tls.add_argument("--tls-cert", metavar="PEM", default=None,
                     help="server certificate chain (PEM); enables HTTPS (default: plain HTTP)")
    tls.add_argument("--tls-key", metavar="PEM", default=None,
                     help="private key (PEM) for --tls-cert, unless that file holds it too")
    tls.add_argument("--http2", action="store_true",
                     help="offer HTTP/2 by ALPN (h2), HTTP/1.1 stays available on the same"
                          " port; needs --tls-cert (default: HTTP/1.1 only)")
    return parser


def parse_rule(text: str) -> tuple[str, str | None]:
    """`VALUE[:TAG]`. Rules themselves contain ':' (from:x, has:links), so only a last
    `:TAG` that is not an operator argument counts as a tag: `cat has:images:cats` ->
    ("cat has:images", "cats"); `from:bob` -> ("from:bob", None)."""
    value, sep, tag = text.rpartition(":")
    if not sep or not value or not tag or " " in tag:
        return text, None
    # `from:bob` style: the part before ':' is a bare operator word, not a full rule.
    if ":" not in value and " " not in value:
        return text, None
    return value, tag


def bind_error(host: str, port: int, exc: OSError) -> str:
    """One line naming the address that could not be bound, and what to do."""
    if exc.errno == errno.EADDRINUSE:
        return (f"port {port} on {host} is already in use (another simulator?); stop it,"
                " or pick another with --port (--port 0 takes a free one)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"not allowed to listen on port {port} on {host}: {exc.strerror}; use a"
                " port above 1023")
    reason = exc.strerror or str(exc)
    return f"cannot listen on {host} port {port}: {reason}; check --host and --port"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rate = math.inf if args.rate.lower() in ("inf", "infinity") else float(args.rate)
        recovery_rate = (math.inf if args.recovery_rate.lower() in ("inf", "infinity")
                         else float(args.recovery_rate))
        config = SimulatorConfig(
            host=args.host,
            port=args.port,
            tokens=tuple(args.tokens or ["test-token"]),
            tier=args.tier,
            tweets_per_second=rate,
            total_tweets=args.total,
            heartbeat_interval=args.heartbeat,
            connection_policy=args.policy,
            usage_cap=args.usage_cap,
            problem_host=args.problem_host,
            gzip=args.gzip,
            replay_file=args.replay,
            scenario_file=args.scenario,
            seed=args.seed,
            match_all=args.match_all,
            rule_propagation_delay=args.rule_propagation_delay,
            tls_certfile=args.tls_cert,
            tls_keyfile=args.tls_key,
            http2=args.http2,
            connection_limit=args.connection_limit,
            zombie_seconds=args.zombie_seconds,
            terminate_ending=args.terminate_ending,
            connections_api=args.connections_api,
            timeline_start=args.timeline_start,
            firehose_partitions=args.firehose_partitions,
            recovery_rate=recovery_rate,
        )
        simulator = Simulator(config)
    except (ValueError, OSError) as exc:
        print(f"streamd simulate: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            simulator.start()
        except OSError as exc:  # the address cannot be bound: the operator's to fix
            print(f"streamd simulate: {bind_error(args.host, args.port, exc)}", file=sys.stderr)
            return int(ExitCode.CONFIG)
        except (RuntimeError, TimeoutError) as exc:
            print(f"streamd simulate: cannot start: {exc}", file=sys.stderr)
            return int(ExitCode.INTERNAL)
        if args.rule:
            # Rules the account already had: no propagation delay.
            simulator.add_rules([parse_rule(rule) for rule in args.rule], immediate=True)
        print(f"simulator listening on {simulator.url}", flush=True)
        print(f"bearer token: {config.tokens[0]}", flush=True)
        while not stop.wait(0.5):
            pass
        return int(ExitCode.OK)
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
