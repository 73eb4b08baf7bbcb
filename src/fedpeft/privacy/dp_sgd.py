"""Sample-level DP-SGD (Abadi et al., CCS 2016) for a client's local training, on Opacus's per-example gradients.

Each update: Opacus's hooks give every trainable parameter its per-example gradients; each example's gradient over
all trainable parameters together is clipped to L2 norm ``clip``; the clipped gradients are summed, Gaussian noise
of std ``noise_multiplier * clip`` is added, and the sum is divided by the batch size; then AdamW steps as usual.
The per-example gradients come from Opacus's ``GradSampleModule`` hooks, which support ``nn.Linear`` (so LoRA,
rsLoRA, DoRA's factors, FFA-LoRA, bottleneck adapters, BitFit's biases, ...) but not, for example, peft's embedding
LoRA (its factors are raw parameters): a trainable parameter without per-example gradients is refused with a clear
error instead of being trained without privacy.

Accounting: the client's own records are the neighbouring unit (example-level DP of that client's data); every
update is a Gaussian mechanism on a batch of ``batch_size`` of its ``n`` examples, accounted as Poisson sampling at
rate ``batch_size / n`` (fedpeft draws fixed-size batches; the usual approximation), composed over every update the
client has made across rounds (Opacus's RDP accountant). Noise comes from the operating system's randomness.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedpeft.errors import ConfigError
from fedpeft.privacy.dp import epsilon, noise_generator
from fedpeft.training.trainer import LossFn, OptimSettings, Trainer

__all__ = ["DPSGDTrainer", "client_epsilon"]


class DPSGDTrainer(Trainer):
    """A :class:`Trainer` whose :meth:`apply` clips per-example gradients and adds noise before AdamW steps.

    Parameters
    ----------
    clip, noise_multiplier
        Per-example L2 clip ``C`` and noise std ``z * C`` on the sum of clipped gradients.
    generator
        The noise's generator (default: seeded from the OS).

    ``cfg.grad_accum`` must be 1 and batch-level clipping (``max_grad_norm``) is not used: the per-example clip
    replaces it. Call :meth:`close` after training to remove Opacus's hooks from the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: OptimSettings,
        loss: LossFn | None = None,
        *,
        word_ids: Tensor | None = None,
        clip: float,
        noise_multiplier: float,
        generator: torch.Generator | None = None,
    ) -> None:
        if cfg.grad_accum != 1:
            raise ConfigError("train.grad_accum", cfg.grad_accum, "1 under DP-SGD (privacy.dp = 'sample')")
        super().__init__(model, cfg, loss, word_ids=word_ids)
        from opacus import GradSampleModule

        self.clip, self.noise_multiplier = float(clip), float(noise_multiplier)
        self.generator = generator if generator is not None else noise_generator()
        self.hooks = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
        self.updates = 0

    def count_backward(self, scaled: Tensor) -> int:
        # the FLOP counter's throwaway backward must not leave per-example gradients behind
        self.hooks.disable_hooks()
        try:
            return super().count_backward(scaled)
        finally:
            self.hooks.enable_hooks()

    def apply(self, other_sq_norm: float | None = None) -> None:
        if other_sq_norm is not None:
            raise ValueError("DP-SGD does not combine with a gradient norm from elsewhere (split learning)")
        samples = []
        for name, p in zip(self.param_names, self.params, strict=True):
            gs = getattr(p, "grad_sample", None)
            if gs is None:
                raise ConfigError(
                    "privacy.dp",
                    "sample",
                    f"an adapter whose every trainable parameter has per-example gradients in Opacus; {name} has "
                    "none (e.g. peft's embedding LoRA): leave that module out of adapter.target_modules",
                )
            samples.append(gs.detach())  # [B, *p.shape]
        batch = int(samples[0].shape[0])
        sq = torch.zeros(batch, dtype=torch.float64, device=samples[0].device)
        for gs in samples:
            sq += gs.reshape(batch, -1).to(torch.float64).pow(2).sum(1)
        factor = (self.clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # [B]
        std = self.noise_multiplier * self.clip
        for p, gs in zip(self.params, samples, strict=True):
            clipped = torch.einsum("b,b...->...", factor.to(gs.dtype), gs)  # sum of the clipped per-example grads
            noise = torch.randn(clipped.shape, generator=self.generator, dtype=torch.float32).to(clipped)
            p.grad = (clipped + std * noise) / batch
            p.grad_sample = None  # type: ignore[attr-defined]
        super().apply()
        self.updates += 1

    def close(self) -> None:
        """Remove Opacus's hooks (and its per-example gradients) from the model."""
        for p in self.params:
            if hasattr(p, "grad_sample"):
                p.grad_sample = None  # type: ignore[attr-defined]
        self.hooks.remove_hooks()


def client_epsilon(total_updates: int, batch_size: int, examples: int, noise_multiplier: float, delta: float) -> float:
    """Epsilon of a client's data after ``total_updates`` DP-SGD updates on batches of ``batch_size`` of its
    ``examples`` (sampling rate ``batch_size / examples``)."""
    rate = min(1.0, batch_size / max(1, examples))
    return epsilon(noise_multiplier, rate, total_updates, delta)
