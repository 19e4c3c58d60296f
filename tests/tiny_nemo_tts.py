"""Tiny FastPitch and HiFi-GAN models built from the real NeMo classes (the layout of
NeMo's ``fastpitch_align_v1.05.yaml`` and ``hifigan.yaml`` at a fraction of the width),
with random weights, saved as real ``.nemo`` archives.  They speak noise; the tests use
them to prove the ``nemo-tts`` backend's loading, speaker choice, shapes and resampling.

A character tokenizer (``EnglishCharsTokenizer``) is used, so no CMUdict / heteronym
files are needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

SAMPLE_RATE = 22050
N_MELS = 80
HOP = 256


def _preprocessor(sample_rate: int) -> dict:
    return {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "features": N_MELS, "lowfreq": 0, "highfreq": 8000, "n_fft": 1024, "n_window_size": 1024,
            "window_size": False, "n_window_stride": HOP, "window_stride": False, "pad_to": 1, "pad_value": 0,
            "sample_rate": sample_rate, "window": "hann", "normalize": None, "preemph": None, "dither": 0.0,
            "frame_splicing": 1, "log": True, "log_zero_guard_type": "add", "log_zero_guard_value": 1e-05,
            "mag_power": 1.0}


def fastpitch_config(n_speakers: int = 1, dim: int = 32, sample_rate: int = SAMPLE_RATE) -> dict:
    fft = {"n_layer": 1, "n_head": 1, "d_model": dim, "d_head": 16, "d_inner": 64, "kernel_size": 3,
           "dropout": 0.1, "dropatt": 0.1, "dropemb": 0.0}
    pred = {"_target_": "nemo.collections.tts.modules.fastpitch.TemporalPredictor", "input_size": dim,
            "kernel_size": 3, "filter_size": 32, "dropout": 0.1, "n_layers": 1}
    return {
        "learn_alignment": True, "n_speakers": n_speakers, "max_token_duration": 75,
        "symbols_embedding_dim": dim, "pitch_embedding_kernel_size": 3, "pitch_fmin": 65.0,
        "pitch_fmax": 2093.0, "pitch_mean": 212.0, "pitch_std": 68.0, "sample_rate": sample_rate,
        "n_mel_channels": N_MELS, "n_window_size": 1024, "n_window_stride": HOP, "n_fft": 1024,
        "lowfreq": 0, "highfreq": 8000, "window": "hann",
        "text_tokenizer": {"_target_": "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers."
                                      "EnglishCharsTokenizer", "punct": True, "apostrophe": True,
                           "pad_with_space": True},
        "train_ds": {"defer_setup": True, "dataset": {"_target_": "nemo.collections.tts.data.dataset.TTSDataset"}},
        "validation_ds": None,
        "preprocessor": _preprocessor(sample_rate),
        "input_fft": {"_target_": "nemo.collections.tts.modules.transformer.FFTransformerEncoder",
                      **fft, "d_embed": dim},
        "output_fft": {"_target_": "nemo.collections.tts.modules.transformer.FFTransformerDecoder", **fft},
        "alignment_module": {"_target_": "nemo.collections.tts.modules.aligner.AlignmentEncoder",
                             "n_text_channels": dim},
        "duration_predictor": dict(pred),
        "pitch_predictor": dict(pred),
    }


def hifigan_config(sample_rate: int = SAMPLE_RATE, channels: int = 32) -> dict:
    return {
        "train_ds": {"defer_setup": True, "dataset": {"_target_": "nemo.collections.tts.data.dataset.VocoderDataset"}},
        "validation_ds": None,
        "preprocessor": {"_target_": "nemo.collections.asr.parts.preprocessing.features.FilterbankFeatures",
                         "nfilt": N_MELS, "lowfreq": 0, "highfreq": 8000, "n_fft": 1024, "n_window_size": 1024,
                         "n_window_stride": HOP, "pad_to": 0, "pad_value": -11.52, "sample_rate": sample_rate,
                         "window": "hann", "normalize": None, "preemph": None, "dither": 0.0, "frame_splicing": 1,
                         "log": True, "log_zero_guard_type": "clamp", "log_zero_guard_value": 1e-05,
                         "mag_power": 1.0, "use_grads": False, "exact_pad": True},
        "generator": {"_target_": "nemo.collections.tts.modules.hifigan_modules.Generator", "resblock": 1,
                      "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
                      "upsample_initial_channel": channels, "resblock_kernel_sizes": [3],
                      "resblock_dilation_sizes": [[1, 3, 5]]},
        "l1_loss_factor": 45, "denoise_strength": 0.0025, "max_steps": 1, "optim": None,
    }


def save_tiny_tts(folder: str | Path, n_speakers: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Save ``fastpitch.nemo`` and ``hifigan.nemo`` (random weights) into ``folder``."""
    import torch
    from omegaconf import OmegaConf

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    from nemo.collections.tts.models import FastPitchModel, HifiGanModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    fp = FastPitchModel(cfg=OmegaConf.create(fastpitch_config(n_speakers)), trainer=None).eval()
    hg = HifiGanModel(cfg=OmegaConf.create(hifigan_config()), trainer=None).eval()
    paths = folder / "fastpitch.nemo", folder / "hifigan.nemo"
    fp.save_to(str(paths[0]))
    hg.save_to(str(paths[1]))
    return paths


if __name__ == "__main__":
    import sys

    print(*save_tiny_tts(sys.argv[1] if len(sys.argv) > 1 else "tiny_tts"))
