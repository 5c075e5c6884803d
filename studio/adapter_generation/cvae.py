"""The conditional VAE of ICM-LoRA (spec §6): flat LoRA vector θ + task vector c -> θ.

Encoder: θ (length D) is zero-padded to a multiple of ``pad_multiple`` (the paper: 4096)
and goes through one block per entry of ``channels`` -- Conv1d(k=7, stride 2, pad 3) +
BatchNorm + LeakyReLU, so the length halves each block -- is flattened, mapped by a Linear
to ``hidden_dim`` (the paper: 256), concatenated with c, and mapped by fc_mu / fc_logvar to
the latent (the paper: 256). Decoder, mirrored: Linear(latent + c) back to the last block's
shape, one ConvTranspose1d(k=7, stride 2, pad 3, output_padding 1) + BatchNorm + ELU block
per channel width in reverse (the last one keeps the first width), and a Conv1d(k=7) to one
channel. ELU in the decoder follows the authors' public code. Loss: MSE(recon, θ) over the
D real values (the padding is not a target) + ``kl_weight`` (0.005) · KL(q(z|θ,c) ‖ N(0, I)),
the KL summed over latent dimensions and averaged over the batch.

c is standardised inside the model (a shift and one scale fitted on the training task
vectors, kept as buffers) so hidden states of any magnitude condition it the same way.

Sizing (presets; parameter counts for the bundled SmolLM2-135M, c of 576 dims, and the
studio's default LoRA r=8 on all seven linear layers of its 30 blocks: D = 2,442,240
values, 9.8 MB in fp32, padded to 2,445,312):

* ``paper`` -- the paper's widths 8,16,32,64,128,256,256,128,64,32,16,8, hidden and latent
  256: 7.8 M parameters (3.2× one adapter) and ~57 GMAC per sample for one forward pass
  of encoder + decoder at that D, mostly in the 128/256-wide blocks: too slow to train on
  a CPU, and more capacity than a few dozen checkpoints can fit.
* ``small`` -- the same 12 blocks (so the same 4096× length reduction, which is what keeps
  the Linear layers small: they map 4 × 597 values) with widths capped at 32
  (4,8,16,32,32,32,32,32,32,16,8,4), hidden 128, latent 64: 2.0 M parameters (0.8× one
  adapter, ~3 % of a 30-checkpoint collection against the paper's ~1 %; three quarters of
  it is the decoder's Linear from latent + c, which grows with c's 576 dims) and ~4 GMAC
  per sample (1/14 of ``paper``); still, one batch-2 training step took ~20 s on the
  project's busy 2-core CPU (one thread), so real runs want a GPU. Width, not depth, was cut: fewer
  blocks would leave a longer sequence for the Linear layers, whose size grows with D.
* ``tiny`` -- 4 blocks (8,16,16,8), pad to 64, hidden 32, latent 16: for tests on 2-layer
  models (D ~ 1k).

:func:`parameter_count` gives the exact count for any preset, D and c size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from studio.errors import ValidationFailed


@dataclass(frozen=True)
class CVAEConfig:
    """Shape of the generator network; ``paper`` is spec §6 as published."""

    channels: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 256, 128, 64, 32, 16, 8)
    hidden_dim: int = 256
    latent_dim: int = 256
    pad_multiple: int = 4096
    kernel_size: int = 7
    kl_weight: float = 0.005

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValidationFailed("a CVAE needs at least one convolution block")
        if self.pad_multiple % (2 ** len(self.channels)):
            raise ValidationFailed(
                f"pad_multiple {self.pad_multiple} must be a multiple of 2^{len(self.channels)} "
                "(each block halves the length)"
            )
        if self.kernel_size % 2 == 0:
            raise ValidationFailed("kernel_size must be odd (the padding keeps the length halving exact)")

    def padded_length(self, size: int) -> int:
        """D rounded up to a multiple of ``pad_multiple``."""
        return -(-size // self.pad_multiple) * self.pad_multiple

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored with a generator)."""
        return asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVAEConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**(data | {"channels": tuple(data["channels"])}))


PRESETS: dict[str, CVAEConfig] = {
    "paper": CVAEConfig(),
    "small": CVAEConfig(
        channels=(4, 8, 16, 32, 32, 32, 32, 32, 32, 16, 8, 4), hidden_dim=128, latent_dim=64, pad_multiple=4096
    ),
    "tiny": CVAEConfig(channels=(8, 16, 16, 8), hidden_dim=32, latent_dim=16, pad_multiple=64),
}


def preset(name: str) -> CVAEConfig:
    """The named preset (paper, small, tiny)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValidationFailed(f"unknown CVAE preset {name!r}; choose one of {sorted(PRESETS)}") from None


def _build_module_class():
    import torch
    from torch import nn

    class CVAE(nn.Module):
        """θ (batch, D) and c (batch, cond_dim) -> reconstruction; see the module docstring."""

        def __init__(self, config: CVAEConfig, input_size: int, cond_dim: int):
            super().__init__()
            self.config, self.input_size, self.cond_dim = config, input_size, cond_dim
            self.padded = config.padded_length(input_size)
            widths = list(config.channels)
            self.last_length = self.padded // 2 ** len(widths)
            k, pad = config.kernel_size, config.kernel_size // 2
            blocks, previous = [], 1
            for width in widths:
                blocks += [nn.Conv1d(previous, width, k, 2, pad), nn.BatchNorm1d(width), nn.LeakyReLU()]
                previous = width
            self.encoder = nn.Sequential(*blocks)
            flat = widths[-1] * self.last_length
            self.to_hidden = nn.Linear(flat, config.hidden_dim)
            self.fc_mu = nn.Linear(config.hidden_dim + cond_dim, config.latent_dim)
            self.fc_logvar = nn.Linear(config.hidden_dim + cond_dim, config.latent_dim)
            self.from_latent = nn.Linear(config.latent_dim + cond_dim, flat)
            reverse = widths[::-1]
            blocks = []
            for i, width in enumerate(reverse):
                out = reverse[i + 1] if i + 1 < len(reverse) else width
                blocks += [
                    nn.ConvTranspose1d(width, out, k, 2, pad, output_padding=1),
                    nn.BatchNorm1d(out),
                    nn.ELU(),
                ]
            self.decoder = nn.Sequential(*blocks)
            self.head = nn.Conv1d(widths[0], 1, k, 1, pad)
            # Task-vector standardisation, fitted on the training conditions (see fit_condition).
            self.register_buffer("cond_shift", torch.zeros(cond_dim))
            self.register_buffer("cond_scale", torch.ones(()))

        def fit_condition(self, conds: Any) -> None:
            """Centre c on the training vectors' mean and scale it to unit RMS."""
            with torch.no_grad():
                shift = conds.mean(dim=0)
                rms = (conds - shift).pow(2).mean().sqrt()
                self.cond_shift.copy_(shift)
                self.cond_scale.fill_(1.0 / float(rms) if float(rms) > 1e-12 else 1.0)

        def _cond(self, c: Any) -> Any:
            return (c - self.cond_shift) * self.cond_scale

        def encode(self, theta: Any, c: Any) -> tuple[Any, Any]:
            """(mu, logvar) of q(z | θ, c)."""
            x = nn.functional.pad(theta, (0, self.padded - theta.shape[-1]))[:, None, :]
            h = self.to_hidden(self.encoder(x).flatten(1))
            h = torch.cat([h, self._cond(c)], dim=-1)
            return self.fc_mu(h), self.fc_logvar(h)

        def decode(self, z: Any, c: Any) -> Any:
            """θ (batch, D) from latent z and task vector c."""
            h = self.from_latent(torch.cat([z, self._cond(c)], dim=-1))
            h = h.view(-1, self.config.channels[-1], self.last_length)
            return self.head(self.decoder(h))[:, 0, : self.input_size]

        def forward(self, theta: Any, c: Any) -> tuple[Any, Any, Any]:
            """(reconstruction, mu, logvar) with a reparameterised z."""
            mu, logvar = self.encode(theta, c)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return self.decode(z, c), mu, logvar

        def loss(self, theta: Any, c: Any) -> tuple[Any, Any, Any]:
            """(total, mse, kl): MSE(recon, θ) + kl_weight · KL."""
            recon, mu, logvar = self(theta, c)
            mse = nn.functional.mse_loss(recon, theta)
            kl = torch.mean(-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
            return mse + self.config.kl_weight * kl, mse, kl

        @torch.no_grad()
        def sample(self, c: Any, generator: Any = None) -> Any:
            """θ for each row of c from z ~ N(0, I) (eval mode: BatchNorm uses its running stats)."""
            z = torch.randn(c.shape[0], self.config.latent_dim, generator=generator, device=c.device)
            return self.decode(z, c)

    return CVAE


_CVAE = None


def build_cvae(config: CVAEConfig, input_size: int, cond_dim: int) -> Any:
    """A fresh CVAE (torch module) for θ of length ``input_size`` and c of ``cond_dim`` dims."""
    global _CVAE
    if _CVAE is None:  # torch is imported lazily: the CLI and UI import this package without it
        _CVAE = _build_module_class()
    if input_size < 1 or cond_dim < 1:
        raise ValidationFailed("a CVAE needs a non-empty θ and task vector")
    return _CVAE(config, input_size, cond_dim)


def parameter_count(config: CVAEConfig, input_size: int, cond_dim: int) -> int:
    """Trainable parameters of the CVAE for this θ length and task-vector size (built on the meta device)."""
    import torch

    with torch.device("meta"):
        model = build_cvae(config, input_size, cond_dim)
    return sum(p.numel() for p in model.parameters())
