"""The streaming verification daemon (``voxguard serve``): the sans-I/O engine
(:class:`~voxguard.daemon.call.CallSession`, one :class:`~voxguard.daemon.session.Session`
per track), the shared worker (:mod:`~voxguard.daemon.batcher`), and the asyncio WebSocket/HTTP server."""
