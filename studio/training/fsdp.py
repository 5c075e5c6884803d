"""FSDP for a training job over several processes: shard the base's decoder layers while training.

With ``hyper.fsdp`` every rank shards each decoder layer of the model with torch's FSDP2
(``fully_shard``) before the optimizer is built: a layer's weights (frozen base and LoRA
tensors alike) live split across the ranks and are all-gathered for its forward and backward
only. The LoRA gradients are reduce-scattered by FSDP as *sums* (divide factor 1, sum-only
collectives, since gloo has no PREMUL_SUM), which is what the per-step target normalisation of
:mod:`studio.training.loop` needs, so the manual all-reduce of :mod:`studio.training.distributed`
skips those tensors. Embeddings, the final norm and the output head stay whole on every rank
(sharding them would hand the chunked loss a split head); they are frozen, so they need no
gradient reduction.

Checkpoints: at the loop's save steps (and on cancel) every rank calls :func:`gather_checkpoint`,
which gathers the whole trainable tensors and optimizer states with torch's state-dict engine
(``get_model_state_dict`` / ``get_optimizer_state_dict`` with ``full_state_dict`` and
``cpu_offload``) onto rank 0, which writes the ordinary checkpoint of
:mod:`studio.training.checkpoint` (an unsharded run can resume from it, and the other way round).
On resume every rank loads the whole adapter tensors before sharding, and
:func:`load_optimizer_state` slices the whole optimizer state into each rank's shards
(``set_optimizer_state_dict``).

Variants: every registered variant trains sharded (each checked against one process by
tests/training/test_distributed.py) except those whose hooks read whole adapter tensors or their
gradients between steps, refused at submit (``FSDP_REFUSED`` in
:mod:`studio.training.distributed_rules`, one reason each). The rank chart reads whole weights
inside :func:`whole` (every rank gathers them).

After the last step :func:`release` gathers every sharded tensor back (a collective: every rank
calls it) and removes FSDP from the model, so rank 0 validates and saves a plain PEFT model,
which then holds the whole base again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated blocks: the longest ``ModuleList`` in it (``model.layers`` for Llama-like bases)."""
    import torch.nn as nn

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError("fsdp: this model has no list of decoder layers to shard")
    return list(max(lists, key=len))


def shard(model: Any) -> int:
    """Shard every decoder layer of ``model`` across the default process group; returns how many."""
    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    for layer in layers:
        fully_shard(layer)
        # sums, not means: the loop normalises each step's loss by the whole step's targets
        layer.set_gradient_divide_factor(1.0)
        layer.set_force_sum_reduction_for_comms(True)  # gloo cannot PREMUL_SUM
    return len(layers)


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is an FSDP shard (a DTensor): FSDP already reduced its gradient."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def release(model: Any) -> None:
    """Gather every sharded parameter back into a plain one and take FSDP off ``model`` (every rank calls it)."""
    import torch.nn as nn
    from torch.distributed.fsdp import FSDPModule

    # FSDP2 has no public "unshard for good": this uses its private state (the hook handles it registered,
    # torch 2.13), checked by tests/training/test_distributed.py, which loads the saved adapter in plain PEFT.
    for module in [m for m in model.modules() if isinstance(m, FSDPModule)]:
        state = module._get_fsdp_state()
        # same order on every rank: each full_tensor() is an all-gather
        full = {name: (p, p.full_tensor()) for name, p in module.named_parameters() if is_sharded(p)}
        for group in state._fsdp_param_groups:
            for handles in (
                group._module_to_pre_save_state_dict_hook_handle,
                group._module_to_pre_load_state_dict_hook_handle,
            ):
                for handle in handles.values():
                    handle.remove()
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for name, (old, tensor) in full.items():
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._parameters[leaf] = nn.Parameter(tensor.detach().clone(), requires_grad=old.requires_grad)
        module.__class__ = next(c for c in type(module).__mro__[1:] if not issubclass(c, FSDPModule))


def reshard(model: Any) -> None:
    """Put every layer's shards back as its parameters (the ones the optimizer holds).

    Each sharded layer is its own FSDP root, and a root keeps its gathered weights after a forward
    pass without backward (the loss check before the first step): the state-dict engine, which
    finds the optimizer's tensors through ``named_parameters``, needs the shards registered.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def whole(model: Any) -> Iterator[None]:
    """Every layer's whole weights registered while inside (every rank enters it: all-gathers), for reading.

    Rank 0 reads them for the rank chart (a variant's ``snapshot_ranks`` / ``rank_extra``); writes
    to them are lost, and gradients stay on the shards.
    """
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # whole tensors, gathered to rank 0's CPU (the other ranks take part in the gathers and get nothing)
    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def gather_trainable(model: Any) -> dict[str, Any]:
    """The whole trainable tensors by parameter name, on rank 0's CPU; ``{}`` on the others (every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    state = get_model_state_dict(model, options=_options())
    # the checkpoint holds the trainable parameters by their names (the state dict adds buffers, if any)
    return {name: state[name] for name, p in model.named_parameters() if p.requires_grad and name in state}


def gather_optimizer_state(model: Any, optimizer: Any) -> dict[str, Any]:
    """``optimizer.state_dict()`` as one process would write it (whole tensors), on rank 0; ``{}`` elsewhere.

    torch's engine keys the state by parameter name; the checkpoint keeps the ordinary format
    (parameters numbered in the optimizer's order), so an unsharded run can resume from it too.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options())
    if not state:
        return {}
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
    }


def gather_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """A variant's ``state_dict_extra`` with any sharded tensor made whole (every rank calls it, same order)."""
    return {key: value.full_tensor() if is_sharded(value) else value for key, value in extra.items()}


def load_optimizer_state(model: Any, optimizer: Any, saved: dict[str, Any]) -> None:
    """Load an ordinary ``optimizer.state_dict()`` (whole tensors, read by every rank) into a sharded optimizer.

    Each rank keeps its own shard of every state tensor (torch's engine slices them like the parameters).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    reshard(model)
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    if len(order) != sum(len(g["params"]) for g in saved["param_groups"]):
        raise ValueError("fsdp: the checkpoint's optimizer holds a different number of tensors")
    by_name = {
        "state": {order[i]: value for i, value in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


def gather_checkpoint(model: Any, variant: Any, optimizers: list[Any], main: bool) -> Any:
    """What a checkpoint writes, whole, on rank 0 (``main``); None on the other ranks. Every rank calls it."""
    from studio.training.checkpoint import Gathered

    trainable = gather_trainable(model)
    extra = gather_extra(variant.state_dict_extra(model))
    states = [gather_optimizer_state(model, optimizer) for optimizer in optimizers]
    return Gathered(trainable=trainable, extra=extra, optimizers=states) if main else None
