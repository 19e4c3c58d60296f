"""Registers ``voxguard stream`` and ``voxguard mic``.  Only argparse here: the client
modules (websockets, numpy, PortAudio) load when a command runs."""

from __future__ import annotations

import os

DEFAULT_URL = "ws://127.0.0.1:8765/v1/stream"
EXIT_CODES = ("Exit status: 0 clean end (and, with --claim, the claim accepted), 1 claim rejected, 2 bad usage "
              "or input, 3 claim undecided, 4 server error event, 5 cannot connect, 6 token refused, "
              "7 connection lost or stream closed by the server")


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
    src.add_argument("--encoding", choices=["pcm_s16le", "pcm_f32le"], default="pcm_s16le",
                     help="stdin sample encoding (default pcm_s16le)")
    src.add_argument("--channels", type=int, choices=[1, 2], default=1, help="stdin channels (default 1)")
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


def _stream(ctx) -> int:
    from .stream import cmd_stream

    return cmd_stream(ctx)


def _mic(ctx) -> int:
    from .mic import cmd_mic

    return cmd_mic(ctx)
