"""voxguard: real-time speaker verification and voice-clone detection.

The shared core lives here (audio input, VAD, windowing, embedders, store,
index, scoring, protocol messages).  The card's top-level folders map to
subpackages: ``daemon/`` -> :mod:`voxguard.daemon`, ``enroll/`` ->
:mod:`voxguard.enroll`, ``clients/`` -> :mod:`voxguard.clients`.
"""

__version__ = "0.1.0"

SAMPLE_RATE = 16000
"""Every embedder and the VAD work on 16 kHz mono float32 audio."""
