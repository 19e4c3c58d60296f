"""AASIST: a raw-waveform spoofing countermeasure with spectro-temporal graph attention.

Written from the paper (Jung et al., "AASIST: Audio Anti-Spoofing using Integrated
Spectro-Temporal Graph Attention Networks", ICASSP 2022, arXiv 2110.01200), with module
names that match the published checkpoints' ``state_dict`` so they load strictly.

The network, for 64,600 samples (4.04 s) of 16 kHz audio:

1. **Front end.** A fixed sinc filter bank (70 band-pass filters, mel-spaced edges, Hamming
   windowed, 129 taps; no trained weights) convolves the waveform; the magnitude is max-pooled
   3 x 3 over (filter, time), batch-normalised and passed through SELU: a ``[1, 23, T]`` image.
2. **Encoder.** Six residual blocks of 2-D convolutions (kernel 2 x 3), each ending in a
   1 x 3 max-pool over time.
3. **Two graphs.** Max of |features| over time gives 23 *spectral* nodes (plus a learnt
   positional code); max over frequency gives the *temporal* nodes.  Each goes through a graph
   attention layer (attention from the element-wise product of node pairs, a temperature in the
   softmax) and a graph pooling that keeps the top-k nodes by a learnt sigmoid gate.
4. **Heterogeneous stacks.** Two parallel branches, each a pair of heterogeneous graph attention
   layers over the union of temporal and spectral nodes (separate attention vectors for
   temporal-temporal, spectral-spectral and cross edges) plus a *master node* that attends to
   all of them; graph pooling between the two layers, residual sums after.  The branches meet by
   element-wise max.
5. **Read-out.** Max of |nodes| and mean of nodes for each node type, and the master node:
   ``5 * gat_dims[1]`` values (the *last hidden* vector), then a linear layer to two logits
   ``[spoof, bona fide]``.

In evaluation mode the network is deterministic; the dropouts of training are identities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NB_SAMP = 64600
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class AasistConfig:
    """The model configuration a checkpoint was trained with (see ``voxguard.models``)."""

    nb_samp: int = NB_SAMP
    first_conv: int = 128
    filts: tuple = (70, (1, 32), (32, 32), (32, 64), (64, 64))
    gat_dims: tuple = (64, 32)
    pool_ratios: tuple = (0.5, 0.7, 0.5, 0.5)
    temperatures: tuple = (2.0, 2.0, 100.0, 100.0)

    @classmethod
    def from_dict(cls, d: dict) -> "AasistConfig":
        filts = d["filts"]
        return cls(int(d.get("nb_samp", NB_SAMP)), int(d["first_conv"]),
                   (int(filts[0]),) + tuple(tuple(int(v) for v in f) for f in filts[1:]),
                   tuple(int(v) for v in d["gat_dims"]), tuple(float(v) for v in d["pool_ratios"]),
                   tuple(float(v) for v in d["temperatures"]))

    @property
    def hidden_dim(self) -> int:
        return 5 * self.gat_dims[1]


def sinc_filters(n_filters: int, kernel_size: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[n_filters, taps]`` band-pass filters with edges equally spaced on the mel scale from 0 Hz to
    Nyquist (mel = 2595 log10(1 + f / 700)), each the difference of two ideal low-pass sincs times a
    Hamming window.  An even ``kernel_size`` gets one more tap (a symmetric, odd filter)."""
    taps = kernel_size + 1 if kernel_size % 2 == 0 else kernel_size
    nyquist = sample_rate // 2
    # the edges span the mel values of a 512-point FFT's bins: 0 .. Nyquist
    mel_lo, mel_hi = 0.0, 2595.0 * math.log10(1.0 + nyquist / 700.0)
    edges = 700.0 * (10.0 ** (np.linspace(mel_lo, mel_hi, n_filters + 1) / 2595.0) - 1.0)
    t = np.arange(-(taps - 1) / 2, (taps - 1) / 2 + 1, dtype=np.float32)
    window = np.hamming(taps).astype(np.float32)
    out = np.zeros((n_filters, taps), dtype=np.float32)
    for i in range(n_filters):
        lo, hi = edges[i], edges[i + 1]
        # computed on float32 time indices, as the checkpoints were trained
        high = (2 * hi / sample_rate) * np.sinc((2 * hi * t / sample_rate).astype(np.float32))
        low = (2 * lo / sample_rate) * np.sinc((2 * lo * t / sample_rate).astype(np.float32))
        out[i] = window * (high - low).astype(np.float32)
    return out


def build_aasist(config: AasistConfig):
    """The AASIST network (a ``torch.nn.Module``) for ``config``, in evaluation mode, untrained."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SincFrontEnd(nn.Module):
        """Fixed (untrained) sinc filter bank: a buffer, not a parameter, so not in the state dict."""

        def __init__(self, n_filters: int, kernel_size: int):
            super().__init__()
            self.register_buffer("filters", torch.from_numpy(sinc_filters(n_filters, kernel_size))[:, None, :],
                                 persistent=False)

        def forward(self, x):  # [b, n] -> [b, filters, n - taps + 1]
            return F.conv1d(x[:, None, :], self.filters)

    class ResidualBlock(nn.Module):
        """Two 2 x 3 convolutions with a (projected) skip, then a 1 x 3 max-pool over time.

        The published checkpoints were trained with the block's first convolution reading the
        block's *input*; the pre-activation (``bn1`` + SELU) of the non-first blocks is computed
        by the original implementation but never used.  ``bn1``'s weights are in the checkpoints
        (so they load strictly) and, to reproduce the published outputs, the same holds here.
        """

        def __init__(self, c_in: int, c_out: int, first: bool):
            super().__init__()
            self.first = first
            if not first:
                self.bn1 = nn.BatchNorm2d(c_in)
            self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=(2, 3), padding=(1, 1))
            self.bn2 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=(2, 3), padding=(0, 1))
            self.conv_downsample = (nn.Conv2d(c_in, c_out, kernel_size=(1, 3), padding=(0, 1))
                                    if c_in != c_out else None)

        def forward(self, x):
            out = self.conv2(F.selu(self.bn2(self.conv1(x))))
            skip = self.conv_downsample(x) if self.conv_downsample is not None else x
            return F.max_pool2d(out + skip, (1, 3))

    def pairwise(x):  # [b, n, d] -> [b, n, n, d]: x_i * x_j for every pair of nodes
        return x[:, :, None, :] * x[:, None, :, :]

    def batch_norm_nodes(bn, x):  # BatchNorm1d over the feature axis of [b, n, d]
        return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)

    class GraphAttention(nn.Module):
        """Graph attention over fully connected nodes: a_ij = softmax_i(w . tanh(W (x_i * x_j)) / T)."""

        def __init__(self, d_in: int, d_out: int, temperature: float):
            super().__init__()
            self.att_proj = nn.Linear(d_in, d_out)
            self.att_weight = nn.Parameter(torch.empty(d_out, 1))
            self.proj_with_att = nn.Linear(d_in, d_out)
            self.proj_without_att = nn.Linear(d_in, d_out)
            self.bn = nn.BatchNorm1d(d_out)
            self.temperature = temperature

        def forward(self, x):
            att = torch.tanh(self.att_proj(pairwise(x))) @ self.att_weight  # [b, n, n, 1]
            att = torch.softmax(att / self.temperature, dim=-2).squeeze(-1)
            x = self.proj_with_att(att @ x) + self.proj_without_att(x)
            return F.selu(batch_norm_nodes(self.bn, x))

    class HeterogeneousGraphAttention(nn.Module):
        """Attention over temporal (type 1) and spectral (type 2) nodes, one attention vector per
        edge type, and a master node attending to every node."""

        def __init__(self, d_in: int, d_out: int, temperature: float):
            super().__init__()
            self.proj_type1 = nn.Linear(d_in, d_in)
            self.proj_type2 = nn.Linear(d_in, d_in)
            self.att_proj = nn.Linear(d_in, d_out)
            self.att_projM = nn.Linear(d_in, d_out)
            self.att_weight11 = nn.Parameter(torch.empty(d_out, 1))
            self.att_weight22 = nn.Parameter(torch.empty(d_out, 1))
            self.att_weight12 = nn.Parameter(torch.empty(d_out, 1))
            self.att_weightM = nn.Parameter(torch.empty(d_out, 1))
            self.proj_with_att = nn.Linear(d_in, d_out)
            self.proj_without_att = nn.Linear(d_in, d_out)
            self.proj_with_attM = nn.Linear(d_in, d_out)
            self.proj_without_attM = nn.Linear(d_in, d_out)
            self.bn = nn.BatchNorm1d(d_out)
            self.temperature = temperature

        def forward(self, x1, x2, master):
            n1 = x1.shape[1]
            x = torch.cat([self.proj_type1(x1), self.proj_type2(x2)], dim=1)  # [b, n1 + n2, d_in]
            # node-to-node attention, the vector chosen by the edge's types
            h = torch.tanh(self.att_proj(pairwise(x)))  # [b, n, n, d_out]
            n = x.shape[1]
            is1 = torch.arange(n, device=x.device) < n1
            s11, s22, s12 = (h @ self.att_weight11, h @ self.att_weight22, h @ self.att_weight12)
            same1 = (is1[:, None] & is1[None, :])[None, :, :, None]
            same2 = (~is1[:, None] & ~is1[None, :])[None, :, :, None]
            att = torch.where(same1, s11, torch.where(same2, s22, s12))
            att = torch.softmax(att / self.temperature, dim=-2).squeeze(-1)  # [b, n, n]
            # the master node attends to every node
            m_att = torch.tanh(self.att_projM(x * master)) @ self.att_weightM  # [b, n, 1]
            m_att = torch.softmax(m_att / self.temperature, dim=1)
            master = self.proj_with_attM(m_att.transpose(1, 2) @ x) + self.proj_without_attM(master)
            x = self.proj_with_att(att @ x) + self.proj_without_att(x)
            x = F.selu(batch_norm_nodes(self.bn, x))
            return x[:, :n1], x[:, n1:], master

    class GraphPool(nn.Module):
        """Keeps the top ``ratio`` of nodes by a learnt sigmoid gate, scaled by that gate."""

        def __init__(self, ratio: float, d: int):
            super().__init__()
            self.ratio = ratio
            self.proj = nn.Linear(d, 1)

        def forward(self, h):
            gate = torch.sigmoid(self.proj(h))  # [b, n, 1]
            k = max(int(h.shape[1] * self.ratio), 1)
            idx = torch.topk(gate, k, dim=1).indices.expand(-1, -1, h.shape[-1])
            return torch.gather(h * gate, 1, idx)

    class Aasist(nn.Module):
        def __init__(self, c: AasistConfig):
            super().__init__()
            self.config = c
            filts, gd, pr, tp = c.filts, c.gat_dims, c.pool_ratios, c.temperatures
            d_enc = filts[-1][-1]
            self.conv_time = SincFrontEnd(filts[0], c.first_conv)
            self.first_bn = nn.BatchNorm2d(1)
            blocks = [filts[1], filts[2], filts[3], filts[4], filts[4], filts[4]]
            self.encoder = nn.Sequential(*[nn.Sequential(ResidualBlock(a, b, first=(i == 0)))
                                           for i, (a, b) in enumerate(blocks)])
            n_spectral = filts[0] // 3  # after the 3 x 3 max-pool over filters
            self.pos_S = nn.Parameter(torch.empty(1, n_spectral, d_enc))
            self.master1 = nn.Parameter(torch.empty(1, 1, gd[0]))
            self.master2 = nn.Parameter(torch.empty(1, 1, gd[0]))
            self.GAT_layer_S = GraphAttention(d_enc, gd[0], tp[0])
            self.GAT_layer_T = GraphAttention(d_enc, gd[0], tp[1])
            self.HtrgGAT_layer_ST11 = HeterogeneousGraphAttention(gd[0], gd[1], tp[2])
            self.HtrgGAT_layer_ST12 = HeterogeneousGraphAttention(gd[1], gd[1], tp[2])
            self.HtrgGAT_layer_ST21 = HeterogeneousGraphAttention(gd[0], gd[1], tp[2])
            self.HtrgGAT_layer_ST22 = HeterogeneousGraphAttention(gd[1], gd[1], tp[2])
            self.pool_S = GraphPool(pr[0], gd[0])
            self.pool_T = GraphPool(pr[1], gd[0])
            self.pool_hS1 = GraphPool(pr[2], gd[1])
            self.pool_hT1 = GraphPool(pr[2], gd[1])
            self.pool_hS2 = GraphPool(pr[2], gd[1])
            self.pool_hT2 = GraphPool(pr[2], gd[1])
            self.out_layer = nn.Linear(5 * gd[1], 2)

        def branch(self, out_t, out_s, master, first, second, pool_s, pool_t):
            t1, s1, m1 = first(out_t, out_s, master)
            s1, t1 = pool_s(s1), pool_t(t1)
            t_aug, s_aug, m_aug = second(t1, s1, m1)
            return t1 + t_aug, s1 + s_aug, m1 + m_aug

        def forward(self, x):
            """``x [b, samples]`` -> (last hidden ``[b, 5 * gat_dims[1]]``, logits ``[b, 2]``)."""
            x = self.conv_time(x)[:, None]  # [b, 1, filters, time]
            x = F.selu(self.first_bn(F.max_pool2d(torch.abs(x), (3, 3))))
            e = self.encoder(x)  # [b, c, spectral nodes, frames]
            e_s = torch.amax(torch.abs(e), dim=3).transpose(1, 2) + self.pos_S
            out_s = self.pool_S(self.GAT_layer_S(e_s))
            e_t = torch.amax(torch.abs(e), dim=2).transpose(1, 2)
            out_t = self.pool_T(self.GAT_layer_T(e_t))
            b = x.shape[0]
            t1, s1, m1 = self.branch(out_t, out_s, self.master1.expand(b, -1, -1), self.HtrgGAT_layer_ST11,
                                     self.HtrgGAT_layer_ST12, self.pool_hS1, self.pool_hT1)
            t2, s2, m2 = self.branch(out_t, out_s, self.master2.expand(b, -1, -1), self.HtrgGAT_layer_ST21,
                                     self.HtrgGAT_layer_ST22, self.pool_hS2, self.pool_hT2)
            out_t, out_s, master = torch.maximum(t1, t2), torch.maximum(s1, s2), torch.maximum(m1, m2)
            hidden = torch.cat([torch.amax(torch.abs(out_t), dim=1), out_t.mean(dim=1),
                                torch.amax(torch.abs(out_s), dim=1), out_s.mean(dim=1), master.squeeze(1)], dim=1)
            return hidden, self.out_layer(hidden)

    net = Aasist(config)
    net.eval()
    return net


def _one_line_load_error(path, e: Exception) -> str:
    """torch's multi-line strict-load error (missing / unexpected keys, size mismatches) as one line."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{path}: not an AASIST checkpoint of this configuration ({text})"


class AasistCountermeasure:
    """A published AASIST checkpoint as a :class:`voxguard.countermeasures.Countermeasure`.

    ``raw`` is ``logit[spoof] - logit[bona fide]`` of the last ``nb_samp`` samples of each
    context (a shorter context is tiled end to end, the checkpoints' input convention);
    ``hidden`` is the network's last hidden vector.  ``min_s`` of voiced audio is the least that
    gets a verdict.  Runs on CUDA when present (``device="auto"``).
    """

    architecture = "aasist"
    runtime = "torch"
    MIN_S = 2.0

    def __init__(self, net, identity, device: str = "cpu", min_s: float = MIN_S, threads: int | None = None):
        import torch

        self.net = net.to(device)
        self.identity = identity
        self.name = identity.name
        self.device = device
        self.context_samples = int(net.config.nb_samp)
        self.min_samples = int(round(min_s * SAMPLE_RATE))
        self.threads = threads
        self._torch = torch

    @classmethod
    def load(cls, path, config: AasistConfig, identity, device: str = "auto", min_s: float = MIN_S,
             threads: int | None = None) -> "AasistCountermeasure":
        """Load ``path`` strictly (no missing or unexpected key, every shape as ``config``).  The
        caller has verified its sha256 (``voxguard.models``).  Raises ``CountermeasureError``."""
        import torch

        from . import CountermeasureError

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise CountermeasureError(f"{path}: not a PyTorch checkpoint ({type(e).__name__})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CountermeasureError(f"{path}: not a state_dict of tensors")
        net = build_aasist(config)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CountermeasureError(_one_line_load_error(path, e)) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(net, identity, device, min_s, threads)

    def prepare(self, context: np.ndarray) -> np.ndarray:
        """The model input of one context: its last ``nb_samp`` samples, tiled when shorter."""
        x = np.asarray(context, dtype=np.float32).reshape(-1)
        n = self.context_samples
        if len(x) == 0:
            raise ValueError("empty context")
        if len(x) < n:
            x = np.tile(x, n // len(x) + 1)[:n]
        return x[-n:]

    def outputs(self, contexts):
        from . import CmOutput

        if not len(contexts):
            return CmOutput(np.zeros(0), np.zeros((0, self.net.config.hidden_dim), dtype=np.float32))
        torch = self._torch
        x = torch.from_numpy(np.stack([self.prepare(c) for c in contexts])).to(self.device)
        old = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                hidden, logits = self.net(x)
        finally:
            if self.threads:
                torch.set_num_threads(old)
        logits = logits.float().cpu().numpy().astype(np.float64)
        return CmOutput(logits[:, 0] - logits[:, 1], hidden.float().cpu().numpy())

    def logits(self, contexts) -> np.ndarray:
        """``[n, 2]`` logits ``[spoof, bona fide]`` (the checkpoints' own output)."""
        torch = self._torch
        x = torch.from_numpy(np.stack([self.prepare(c) for c in contexts])).to(self.device)
        with torch.inference_mode():
            return self.net(x)[1].float().cpu().numpy()
