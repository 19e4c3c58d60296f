"""Clients of the voxguard daemon: an async client library (:class:`Client`, audio
sources, typed events) and the ``voxguard stream`` / ``voxguard mic`` commands.

They speak only the protocol (:mod:`voxguard.protocol`) and use :mod:`voxguard.audio`
to decode files; nothing here imports the daemon.  ``docs/clients.md`` is the guide::

    import asyncio
    from voxguard.clients import Client, file_source

    async def main():
        client = Client("ws://127.0.0.1:8765/v1/stream", token=None, reconnect=True)
        summary = await client.run(file_source("call.wav"), print, claimed_speaker="alice")
        print(summary.verdict)  # accept / reject / undecided

    asyncio.run(main())
"""

from .client import (DEFAULT_URL, ApiError, AuthRefused, Client, ClientError, ConnectFailed, ConnectionLost, ServerError,
                     StreamConnection, backoff_delay, encode_block)
from .events import (CloneSuspicion, Error, Event, Identity, Ready, Reconnected, SpeechEnd, SpeechStart, Summary,
                     Verification, Warning, parse_event)
from .sources import ArraySource, AudioSource, PcmSource, QueueSource, file_source

__all__ = [
    "DEFAULT_URL", "Client", "StreamConnection", "ClientError", "ConnectFailed", "AuthRefused", "ServerError",
    "ApiError",
    "ConnectionLost", "backoff_delay", "encode_block",
    "Event", "Ready", "SpeechStart", "SpeechEnd", "Identity", "Verification", "CloneSuspicion", "Warning",
    "Summary", "Error", "Reconnected", "parse_event",
    "AudioSource", "ArraySource", "PcmSource", "QueueSource", "file_source",
]
