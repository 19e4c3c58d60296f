"""The streaming verification daemon (``voxguard serve``): the sans-I/O
:class:`~voxguard.daemon.session.Session` engine, the shared
:class:`~voxguard.daemon.batcher.Batcher`, and the asyncio WebSocket/HTTP server."""
