"""``voxguard stream FILE|-``: stream a file, or raw PCM from stdin, to the daemon and print
its events; plus the terminal loop ``voxguard mic`` shares (:func:`run_job`).

Exit codes (also for ``voxguard mic``):

== ==========================================================================================
0  the stream ended cleanly (summary received) and, with ``--claim``, the claim was accepted
1  the claimed speaker was rejected
2  bad usage or input (unreadable file, bad option)
3  the claim stayed undecided
4  the server sent an ``error`` event (unknown claimed speaker, protocol error, busy ...)
5  cannot connect (nothing listening, DNS, TLS, HTTP error)
6  the server refused the token (HTTP 401/403)
7  the connection dropped or the server closed/shut down the stream before it ended
8  no usable audio input device (``voxguard mic``)
9  the stream ended cleanly but the server dropped windows it could not keep up with (real-time
   streams only: the decisions miss that audio; ``--no-pace`` streams a file losslessly)
130 interrupted (``voxguard stream``: Ctrl-C stops the stream, prints the summary, exits 130)
== ==========================================================================================
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from voxguard.errors import VoxguardError
from voxguard.protocol import wire_json

from .client import Client, ClientError, ServerError
from .events import Event, Reconnected, Summary
from .sources import AudioSource, PcmSource, file_source
from .view import LiveView

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNDECIDED, EXIT_DROPPED = 0, 1, 2, 3, 9
EXIT_INTERRUPTED = 130
TOKEN_ENV = "VOXGUARD_TOKEN"


class UsageError(VoxguardError):
    exit_code = EXIT_USAGE


def verdict_exit_code(summary: Summary) -> int:
    """1 (rejected), 3 (undecided), else 9 when windows were dropped, else 0."""
    code = {None: EXIT_OK, "accept": EXIT_OK, "reject": EXIT_REJECTED}.get(summary.verdict, EXIT_UNDECIDED)
    return EXIT_DROPPED if code == EXIT_OK and summary.dropped_windows else code


# -- options -------------------------------------------------------------------------------
def read_token(args) -> str | None:
    if args.token and args.token_file:
        raise UsageError("--token and --token-file are mutually exclusive")
    if args.token_file:
        p = Path(args.token_file).expanduser()
        try:
            lines = [ln.strip() for ln in p.read_text().splitlines()]
        except OSError as e:
            raise UsageError(f"cannot read token file {p}: {e.strerror or e}") from None
        # a daemon token file's line is "TOKEN [SCOPES]": the first field is the token
        token = next((ln.split()[0] for ln in lines if ln and not ln.startswith("#")), None)
        if token is None:
            raise UsageError(f"token file {p} holds no token")
        return token
    return args.token or os.environ.get(TOKEN_ENV) or None


def client_from_args(args) -> Client:
    ctx = None
    if args.cafile:
        try:
            ctx = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load --cafile {args.cafile}: {e}") from None
    if args.reconnect < 0:
        raise UsageError("--reconnect must be 0 or more")
    return Client(args.url, read_token(args), ssl=ctx, reconnect=args.reconnect > 0,
                  max_attempts=max(1, args.reconnect + 1))


def options_from_args(args) -> dict:
    opts = {"window": args.window, "hop": args.hop, "vad_aggressiveness": args.vad_aggressiveness,
            "top_k": args.top_k}
    return {k: v for k, v in opts.items() if v is not None}


# -- the loop -------------------------------------------------------------------------------
@dataclass
class StreamJob:
    """One terminal streaming session: where to, what audio, how to print."""

    client: Client
    source: AudioSource
    claimed_speaker: str | None = None
    options: dict = field(default_factory=dict)
    stream_id: str | None = None
    json: bool = False
    channel_mode: str = "mix"
    claimed_speakers: dict[int, str] = field(default_factory=dict)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)


def _print(text: str, out: TextIO) -> None:
    print(text, file=out, flush=True)


async def run_job(job: StreamJob, *, handle_sigint: bool = True, interrupted_exit: int | None = None) -> int:
    """Stream ``job.source``, print every event, and return the exit code.

    The first Ctrl-C (SIGINT) sends ``stop`` and waits for the summary; a second one
    aborts.  After a Ctrl-C the exit code is ``interrupted_exit`` when given (``stream``:
    130), else the verdict's (``mic``: Ctrl-C is how it ends).  Failures raise
    :class:`~voxguard.clients.ClientError` (after printing the server's ``error`` event
    with ``--json``)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_sigint() -> None:
        if stop.is_set():
            main.cancel()
            return
        stop.set()
        _print("voxguard: stopping, waiting for the summary (Ctrl-C again to abort)", job.err)

    if handle_sigint:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    view = LiveView()
    summary: Summary | None = None
    try:
        async for event in job.client.stream(job.source, claimed_speaker=job.claimed_speaker, options=job.options,
                                             stream_id=job.stream_id, stop=stop, channel_mode=job.channel_mode,
                                             claimed_speakers=job.claimed_speakers):
            if isinstance(event, Summary):
                summary = event
            _show(event, view, job)
    except ServerError as e:
        if job.json:
            _print(wire_json(e.event.raw), job.out)
        raise
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        if handle_sigint:
            loop.remove_signal_handler(signal.SIGINT)
    assert summary is not None
    if summary.dropped_windows:
        _print(f"voxguard: warning: the server dropped {summary.dropped_windows} of "
               f"{summary.windows.get('emitted')} windows it could not keep up with; the decisions miss that "
               f"audio (stream files with --no-pace to lose nothing)", job.err)
    if stop.is_set() and interrupted_exit is not None:
        return interrupted_exit
    return verdict_exit_code(summary)


def _show(event: Event, view: LiveView, job: StreamJob) -> None:
    if job.json:
        if isinstance(event, Reconnected):  # not a server event: a note on stderr
            _print(f"voxguard: reconnected as stream {event.stream_id}: {event.reason}", job.err)
        else:
            _print(wire_json(event.raw), job.out)
        return
    line = view.render(event)
    if line is not None:
        _print(line, job.out)


def run(job: StreamJob, **kwargs) -> int:
    """:func:`run_job` from synchronous code (the CLI)."""
    try:
        return asyncio.run(run_job(job, **kwargs))
    except ClientError:
        raise
    except ValueError as e:  # bad audio blocks or stream settings
        raise UsageError(str(e)) from None
    except OSError as e:  # the source (a pipe) failed
        raise UsageError(f"cannot read the audio input: {e.strerror or e}") from None


# -- `voxguard stream` (arguments in commands.py) ------------------------------------------
def source_from_args(args) -> AudioSource:
    if args.block <= 0 or args.block > 10:
        raise UsageError("--block must be between 0 and 10 seconds")
    if not args.no_pace and args.speed <= 0:
        raise UsageError("--speed must be positive")
    speed = None if args.no_pace else args.speed
    separate = args.channels == "separate"
    if args.input == "-":
        try:
            return PcmSource(sys.stdin.buffer, args.rate, args.encoding, 2 if separate else int(args.channels),
                             args.block, speed)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return file_source(args.input, args.block, speed, keep_channels=separate)  # AudioError names the file


def claims_from_args(args) -> tuple[str | None, dict[int, str]]:
    """(claimed_speaker, claimed_speakers): with ``--channels separate``, ``--claim`` is
    ``CH=SPEAKER[,CH=SPEAKER]`` (a bare ``SPEAKER`` claims channel 0)."""
    if getattr(args, "channels", "1") != "separate" or not args.claim:
        return args.claim, {}
    claims = {}
    for part in args.claim.split(","):
        ch, sep, name = part.partition("=")
        if not sep:
            ch, name = "0", part
        if not ch.strip().isdigit() or not name.strip():
            raise UsageError(f"--claim with --channels separate takes CH=SPEAKER pairs, got {part!r}")
        claims[int(ch)] = name.strip()
    return None, claims


def cmd_stream(ctx) -> int:
    args = ctx.args
    source = source_from_args(args)
    claimed, claims = claims_from_args(args)
    options = options_from_args(args)
    if args.no_pace:
        options["realtime"] = False  # as fast as the server embeds: it stops reading instead of dropping
    job = StreamJob(client_from_args(args), source, claimed, options, args.stream_id, ctx.json,
                    "separate" if args.channels == "separate" else "mix", claims)
    code = run(job, interrupted_exit=EXIT_INTERRUPTED)
    dropped = getattr(source, "dropped_bytes", 0)
    if dropped:
        _print(f"voxguard: warning: dropped {dropped} trailing byte(s) of stdin (not a whole sample frame)",
               sys.stderr)
    return code
