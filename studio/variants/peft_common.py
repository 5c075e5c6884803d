"""Shared machinery of the variants PEFT already implements (spec §10).

A PEFT-backed variant only says which PEFT config to build (``peft_config``) and,
where PEFT needs it, how to initialise or optimise; ΔW, exact plain-LoRA factors,
final ranks and native saving come from here.
"""

from __future__ import annotations

from typing import Any

from studio.variants.base import BuildContext, Variant


def peft_root(model: Any) -> Any:
    """The transformers model inside a PeftModel (module names relative to it are the contract's)."""
    return model.base_model.model


def tuner_layers(model: Any) -> dict[str, Any]:
    """{module name: PEFT tuner layer} for every adapted module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in peft_root(model).named_modules() if isinstance(m, BaseTunerLayer)}


def merged_delta(layer: Any, adapter: str = "default") -> Any:
    """ΔW of any PEFT layer = merged weight − W0, computed by a merge that is undone exactly.

    Used where ΔW is not a plain product (DoRA's magnitude rescaling, MiSS blocks): the
    layer's own merge code is the definition of what it adds at inference.
    """
    import torch

    base = layer.get_base_layer()
    original = base.weight.data.clone()
    try:
        with torch.no_grad():
            layer.merge(safe_merge=True, adapter_names=[adapter])
            merged = base.weight.data.clone()
    finally:
        # Restore W0 bit-for-bit instead of unmerge(), whose inverse is only approximate.
        base.weight.data = original
        layer.merged_adapters = [a for a in layer.merged_adapters if a != adapter]
    # The difference is exact in float64 (so a float64 model gives a float64-accurate ΔW), then fp32.
    return (merged.to(torch.float64) - original.to(torch.float64)).float().cpu()


def layer_delta(layer: Any, adapter: str = "default") -> Any:
    """ΔW (out × in, fp32, CPU) of one PEFT layer."""
    import torch
    from peft.tuners.lora import LoraLayer

    is_lora = isinstance(layer, LoraLayer) and adapter in getattr(layer, "lora_A", {})
    if is_lora and adapter not in getattr(layer, "lora_variant", {}) and hasattr(layer, "get_delta_weight"):
        with torch.no_grad():
            return layer.get_delta_weight(adapter).detach().float().cpu()
    return merged_delta(layer, adapter)


class PeftVariant(Variant):
    """Base of the variants whose adapter is a PEFT model; subclasses implement ``peft_config``."""

    peft_native = True

    def peft_config(self, ctx: BuildContext) -> Any:
        """The PEFT config to wrap the base with."""
        raise NotImplementedError

    def lora_kwargs(self, ctx: BuildContext) -> dict[str, Any]:
        """Extra LoraConfig arguments of a LoRA flavour (use_dora, init_lora_weights, ...)."""
        return {}

    def lora_config(self, ctx: BuildContext, **overrides: Any) -> Any:
        """A LoraConfig from the shared params, the resolved targets and heads, and ``lora_kwargs``."""
        from peft import LoraConfig

        p = self.params
        kwargs = dict(
            r=p.r,
            lora_alpha=p.lora_alpha,
            lora_dropout=p.lora_dropout,
            target_modules=list(ctx.target_modules),
            modules_to_save=list(ctx.modules_to_save) or None,
            task_type=ctx.peft_task_type,
        )
        kwargs.update(self.lora_kwargs(ctx))
        kwargs.update(overrides)
        return LoraConfig(**kwargs)

    def build(self, ctx: BuildContext) -> Any:
        from peft import get_peft_model

        return get_peft_model(ctx.model, self.peft_config(ctx))

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: layer_delta(layer) for name, layer in tuner_layers(model).items()}

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]] | None:
        """Exact (s·B, A) for plain LoRA layers; None (SVD of ΔW) when any layer is not a plain product."""
        import torch
        from peft.tuners.lora import LoraLayer

        factors = {}
        for name, layer in tuner_layers(model).items():
            plain = isinstance(layer, LoraLayer) and "default" in layer.lora_A
            if not plain or "default" in layer.lora_variant or layer.fan_in_fan_out:
                return None
            with torch.no_grad():
                b = layer.lora_B["default"].weight.float() * layer.scaling["default"]
                factors[name] = (b.cpu(), layer.lora_A["default"].weight.float().cpu())
        return factors

    def final_ranks(self, model: Any) -> dict[str, int]:
        ranks = self.rank_allocation(model)
        if ranks is not None:
            return ranks
        out = {}
        for name, layer in tuner_layers(model).items():
            r = getattr(layer, "r", {}).get("default") if isinstance(getattr(layer, "r", None), dict) else None
            out[name] = int(r) if r is not None else int(self.params.r)
        return out


class MutatedInitVariant(PeftVariant):
    """PEFT LoRA flavours whose init moves part of W0 into the adapter (PiSSA, OLoRA, LoRA-GA).

    Training runs on W_res = W0 − s·B0A0. Relative to the ORIGINAL W0 the adapter adds
    s·(BA − B0A0): a rank-2r LoRA ([B, −B0], [A; A0]). The job's artifact is that portable
    adapter, written by PEFT's ``path_initial_model_for_weight_conversion``.
    """

    export_exact = True

    def after_wrap(self, model: Any, ctx: BuildContext) -> None:
        """Remember the initial factors and save the initial adapter the conversion needs."""
        import torch

        self._initial_dir = ctx.work_dir / "initial_adapter"
        with torch.no_grad():
            self._initial = {
                name: (layer.lora_B["default"].weight.detach().clone(), layer.lora_A["default"].weight.detach().clone())
                for name, layer in tuner_layers(model).items()
            }
        config = model.peft_config["default"]
        kind = config.init_lora_weights
        config.init_lora_weights = True  # reloading the initial adapter must not re-run the mutation
        try:
            model.save_pretrained(str(self._initial_dir), safe_serialization=True)
        finally:
            config.init_lora_weights = kind

    def build(self, ctx: BuildContext) -> Any:
        model = super().build(ctx)
        self.after_wrap(model, ctx)
        return model

    def plain_lora_factors(self, model: Any) -> dict[str, tuple[Any, Any]] | None:
        import torch

        factors = {}
        with torch.no_grad():
            for name, layer in tuner_layers(model).items():
                s = layer.scaling["default"]
                b0, a0 = self._initial[name]
                b = torch.cat([layer.lora_B["default"].weight, -b0], dim=1).float() * s
                a = torch.cat([layer.lora_A["default"].weight, a0], dim=0).float()
                factors[name] = (b.cpu(), a.cpu())
        return factors

    def delta_weights(self, model: Any) -> dict[str, Any]:
        return {name: b @ a for name, (b, a) in self.plain_lora_factors(model).items()}

    def final_ranks(self, model: Any) -> dict[str, int]:
        return {name: 2 * r for name, r in super().final_ranks(model).items()}

    def save_adapter(self, model: Any, out_dir: Any, ectx: Any) -> Any:
        from studio.variants.base import ExportReport

        if ectx.modules_to_save:
            # PEFT's conversion keeps only lora_A/lora_B tensors and would drop the trained head.
            return self.export_plain_lora(model, out_dir, ectx)
        model.save_pretrained(
            str(out_dir),
            safe_serialization=True,
            path_initial_model_for_weight_conversion=str(self._initial_dir),
        )
        return ExportReport(path=str(out_dir), ranks=self.final_ranks(model), format="peft-lora-converted")
