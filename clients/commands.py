"""Registers ``voxguard stream`` and ``voxguard mic``.  Only argparse here: the client
modules (websockets, numpy, PortAudio) load when a command runs."""

from __future__ import annotations

import os

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
DEFAULT_MONITOR_URL = "ws://127.0.0.1:8765/v1/monitor"
EXIT_CODES = ("Exit status: 0 clean end (and, with --claim, the claim accepted), 1 claim rejected, 2 bad usage "
              "or input, 3 claim undecided, 4 server error event, 5 cannot connect, 6 token refused, "
              "7 connection lost or stream closed by the server, 9 the server dropped windows it could not keep "
              "up with (real time; --no-pace streams losslessly)")


def add_connection_arguments(p) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--url", default=os.environ.get("VOXGUARD_URL", DEFAULT_URL),
                   help=f"daemon stream URL, ws:// or wss:// (default $VOXGUARD_URL or {DEFAULT_URL})")
    g.add_argument("--token", help="bearer token (default $VOXGUARD_TOKEN)")
    g.add_argument("--token-file", metavar="FILE", help="read the token from FILE (first non-comment line)")
    g.add_argument("--cafile", metavar="PEM", help="CA certificate(s) to trust for wss://")
    g.add_argument("--reconnect", type=int, metavar="N", default=0,
                   help="when the connection drops or the server restarts, open a new stream up to N times "
                        "(exponential backoff with jitter; default 0: fail at once)")
    s = p.add_argument_group("stream")
    s.add_argument("--claim", metavar="SPEAKER", help="claimed speaker to verify")
    s.add_argument("--stream-id", help="stream id (default: random)")
    s.add_argument("--window", type=float, help="analysis window, seconds (server default 1.5)")
    s.add_argument("--hop", type=float, help="seconds between windows (server default 0.5)")
    s.add_argument("--vad-aggressiveness", type=int, choices=range(4), metavar="0-3", help="webrtcvad mode")
    s.add_argument("--top-k", type=int, help="speakers listed per identity event (server default 5)")


def register(sub, common) -> None:
    p = sub.add_parser(
        "stream", parents=[common], help="stream a file or raw PCM to the daemon and print its events",
        description="Stream audio to a voxguard daemon and print its events: a live view by default, one JSON "
                    "event per line with --json. A FILE (anything 'voxguard' decodes) is sent as 16 kHz mono "
                    "16-bit PCM; '-' reads raw interleaved PCM from stdin (--rate, --encoding, --channels), "
                    "passed through unchanged. Paced at real time unless --speed or --no-pace. Ctrl-C stops "
                    "the stream, prints the summary and exits 130. " + EXIT_CODES + ".")
    p.add_argument("input", metavar="FILE|-", help="audio file, or - for raw PCM on stdin")
    src = p.add_argument_group("audio")
    src.add_argument("--rate", type=int, default=16000, help="stdin sample rate, Hz (default 16000)")
    src.add_argument("--encoding", choices=["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"], default="pcm_s16le",
                     help="stdin sample encoding (default pcm_s16le; pcm_mulaw / pcm_alaw: G.711 telephone audio)")
    src.add_argument("--channels", choices=["1", "2", "separate"], default="1",
                     help="stdin channels (default 1; 2 is mixed into one voice by the server); 'separate': a "
                          "stereo FILE or 2-channel stdin where each channel is its own speaker track (e.g. "
                          "caller and agent), claims then given as --claim 0=alice,1=bob")
    src.add_argument("--block", type=float, default=0.1, metavar="SECONDS",
                     help="audio per binary frame (default 0.1 s)")
    pace = src.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, metavar="X", help="send at X times real time (default 1)")
    pace.add_argument("--no-pace", action="store_true", help="send as fast as the connection allows")
    add_connection_arguments(p)
    p.set_defaults(func=_stream)

    p = sub.add_parser(
        "mic", parents=[common], help="stream a microphone to the daemon with a live view",
        description="Capture a microphone (PortAudio; Debian package libportaudio2) at its native rate and "
                    "stream it to a voxguard daemon, showing who is speaking, the scores, the claimed "
                    "speaker's verdict and the clone suspicion. Ctrl-C stops the stream and prints the session "
                    "summary. " + EXIT_CODES + ", 8 no usable input device.")
    p.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    # '--device' is the global model-device option (cpu/cuda), hence '--input-device'
    p.add_argument("-d", "--input-device", metavar="INDEX|NAME",
                   help="input device, by index or part of its name (default: the system default)")
    p.add_argument("--rate", type=int, help="capture rate, Hz (default: the device's native rate)")
    p.add_argument("--block", type=float, default=0.1, metavar="SECONDS", help="capture block (default 0.1 s)")
    add_connection_arguments(p)
    p.set_defaults(func=_mic)

    p = sub.add_parser(
        "monitor", parents=[common], help="print every active stream's events from the daemon's monitor feed",
        description="Subscribe to the daemon's monitor feed (/v1/monitor) and print the events of every active "
                    "stream as they happen: one line per event prefixed with the stream id, or one JSON event "
                    "per line with --json. Exit status: 0 the feed ended (server shutdown, or --once), 4 server "
                    "error event (bad filter), 5 cannot connect, 6 token refused, 7 connection lost.")
    p.add_argument("--url", default=os.environ.get("VOXGUARD_MONITOR_URL", DEFAULT_MONITOR_URL),
                   help=f"monitor feed URL (default $VOXGUARD_MONITOR_URL or {DEFAULT_MONITOR_URL})")
    p.add_argument("--token", help="bearer token (default $VOXGUARD_TOKEN)")
    p.add_argument("--token-file", metavar="FILE", help="read the token from FILE (first non-comment line)")
    p.add_argument("--cafile", metavar="PEM", help="CA certificate(s) to trust for wss://")
    p.add_argument("--stream-id", action="append", metavar="ID", help="only this stream (repeatable)")
    p.add_argument("--types", metavar="TYPE,...", help="only these event types, e.g. identity,verification")
    p.add_argument("--min-clone-level", choices=["low", "medium", "high"],
                   help="hold back clone_suspicion events below this level")
    p.add_argument("--once", action="store_true", help="exit after the first stream's summary")
    p.set_defaults(func=_monitor, reconnect=0)


def _stream(ctx) -> int:
    from .stream import cmd_stream

    return cmd_stream(ctx)


def _monitor(ctx) -> int:
    from .monitor import cmd_monitor

    return cmd_monitor(ctx)


def _mic(ctx) -> int:
    from .mic import cmd_mic

    return cmd_mic(ctx)
