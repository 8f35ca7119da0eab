"""A frozen base sharded over processes (FSDP2, DeepSpeed ZeRO-3) with a soft prompt that trains.

A soft prompt is kilobytes and the base it adapts may be a 70B model, so only the base is sharded:

* **the prompt stays whole on every process**. FSDP is told to leave it alone (``ignored_params``)
  and its gradient is averaged over the processes after each backward pass, as DDP would, so the
  checkpoint, the exact resume and the adapter file are those of a one-process run (written once,
  by the main process, from a prompt every process holds). ZeRO-3 partitions every parameter it
  is given, the prompt included, and gathers it where it is read.
* **what the prompt reads of the base is gathered first**. ZeRO-3 loads a model partitioned
  (``zero3_init_flag``): its word embeddings have shape ``[0]`` on every process (peft #206,
  #1633), so text and vocabulary inits would read nothing. :func:`whole_parameters` gathers a
  module's parameters for a moment (the embedding, for an init); :func:`whole_while_running` does
  it module by module while a forward pass runs (an init that runs the model: prefix inits).
* **calls outside the sharded forward** (scoring dev sets, generating) see the root's parameters
  sharded: :func:`unsharded` gathers them for the duration.

Why the last decoder layer stays unsharded after backward (:func:`prepare`): a causal decoder
compiles prompt-tuning and P-tuning virtual tokens into a key/value prefix with one extra forward
pass (:func:`softprompt.injection.capture.virtual_tokens_prefix`) whose only outputs are the
keys/values it leaves. FSDP gathers a layer for backward when the gradient of the layer's *output*
arrives; the last layer's output in that pass feeds nothing, so its weights would be gathered for
the main pass's backward, freed, and then missing when the prefix's gradient reaches them.

Examples:
    >>> with whole_parameters(base_model.get_input_embeddings()) as (weight,):   # nothing to gather here
    ...     tuple(weight.shape)
    (96, 32)
    >>> is_sharded(base_model.get_input_embeddings().weight)
    False
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


# ------------------------------------------------------------------------------ what is sharded
def is_zero3(param: torch.Tensor) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``param`` (it then has shape ``[0]`` outside a gather)."""
    return hasattr(param, "ds_id")


def is_sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is a shard of a tensor (FSDP2's ``DTensor``, or ZeRO-3's partition)."""
    return isinstance(param, DTensor) or is_zero3(param)


@contextlib.contextmanager
def whole_parameters(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Gather ``module``'s parameters (recursively) for the duration; yields them whole, in order.

    Under ZeRO-3 the module's forward then reads the whole weights too (they are gathered in
    place); an FSDP2 ``DTensor`` parameter is swapped for its full tensor and put back after. Every
    process must enter (gathering is collective). Read-only: changes are not written back.
    """
    params = dict(module.named_parameters())
    zero3 = [p for p in params.values() if is_zero3(p)]
    swapped = _swap_in_full_tensors(module)
    try:
        with _zero3_gathered(zero3):
            yield [module.get_parameter(name) for name in params]
    finally:
        _swap_back(swapped)


@contextlib.contextmanager
def whole_while_running(model: nn.Module) -> Iterator[nn.Module]:
    """While a forward pass of ``model`` runs, gather each module's own parameters just before the
    module runs and release them just after, so at most one module is whole at a time.

    For passes before the sharded model's own hooks exist (ZeRO-3 partitions at load time, but
    gathers in forward only once ``deepspeed.initialize`` wraps the model): a prefix init runs the
    frozen model over its init tokens. No-op on a model with nothing sharded.
    """
    sharded = [m for m in model.modules() if any(is_sharded(p) for p in m.parameters(recurse=False))]
    opened: dict[nn.Module, contextlib.ExitStack] = {}

    def gather(module: nn.Module, args: Any) -> None:
        stack = opened[module] = contextlib.ExitStack()
        stack.enter_context(_own_parameters_whole(module))

    def release(module: nn.Module, args: Any, output: Any) -> None:
        opened.pop(module).close()

    handles = [
        h for m in sharded for h in (m.register_forward_pre_hook(gather), m.register_forward_hook(release))
    ]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for stack in opened.values():
            stack.close()


@contextlib.contextmanager
def _own_parameters_whole(module: nn.Module) -> Iterator[None]:
    zero3 = [p for p in module.parameters(recurse=False) if is_zero3(p)]
    swapped = _swap_in_full_tensors(module, recurse=False)
    try:
        with _zero3_gathered(zero3):
            yield
    finally:
        _swap_back(swapped)


def _zero3_gathered(params: list[torch.Tensor]):
    """Gather the ZeRO-3 ``params`` that are partitioned now. Those already whole (an outer gather,
    or DeepSpeed's own forward hooks) are left to whoever gathered them: DeepSpeed refuses nested
    gathers of one parameter, and releasing it here would partition it under its owner."""
    if not params:
        return contextlib.nullcontext()
    import deepspeed  # only a ZeRO-3 parameter gets here, so DeepSpeed is installed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    partitioned = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if not partitioned:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


_Swapped = list[tuple[nn.Module, str, nn.Parameter]]


def _swap_in_full_tensors(module: nn.Module, recurse: bool = True) -> _Swapped:
    """Replace each ``DTensor`` parameter by a plain frozen copy of the whole tensor (all-gathered)."""
    swapped: _Swapped = []
    for owner in module.modules() if recurse else (module,):
        for name, param in list(owner._parameters.items()):
            if isinstance(param, DTensor):
                owner._parameters[name] = nn.Parameter(param.full_tensor().detach(), requires_grad=False)
                swapped.append((owner, name, param))
    return swapped


def _swap_back(swapped: _Swapped) -> None:
    for owner, name, param in swapped:
        owner._parameters[name] = param


# ------------------------------------------------------------------------------------ training
def trained_modules(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules of ``module`` whose parameters all train: the prompt (and a
    classifier's new head), what FSDP leaves whole."""
    found: dict[str, nn.Module] = {}
    for name, child in module.named_modules():
        params = list(child.parameters())
        if not name or not params or not all(p.requires_grad for p in params):
            continue
        if not any(name.startswith(f"{outer}.") for outer in found):
            found[name] = child
    return list(found.values())


def prepare(accelerator: Any, objective: nn.Module, optimizer: torch.optim.Optimizer):
    """``accelerator.prepare(objective, optimizer)``, with what a sharded frozen base needs.

    FSDP2: the trained modules stay whole (ignored by FSDP, gradients averaged over processes);
    the last decoder layer stays gathered from its backward to the end of backward (see the module
    docstring). ZeRO-3: the output head's weight, which classifiers read without calling the head,
    is gathered with the objective's forward. Anything else: plain ``accelerator.prepare``.
    """
    if _fsdp_version(accelerator) == 2:
        trained = trained_modules(objective)
        plugin = accelerator.state.fsdp_plugin
        if isinstance(plugin.ignored_modules, str):
            raise ValueError(
                "softprompt sets FSDP's ignored modules itself (the prompt); remove fsdp_ignored_modules "
                "from the accelerate config"
            )
        plugin.ignored_modules = [*(plugin.ignored_modules or ()), *trained]
        wrapped, optimizer = accelerator.prepare(objective, optimizer)
        # FSDP2 takes the first module to run forward as the root; softprompt runs layers outside the
        # root's forward (zero-shot scoring, prefix inits), so the root is named now.
        wrapped._get_fsdp_state()._lazy_init()
        average_gradients([p for m in trained for p in m.parameters()], accelerator.num_processes)
        keep_last_layer_for_backward(wrapped)
        return wrapped, optimizer
    if _fsdp_version(accelerator) == 1:
        raise ValueError("softprompt trains under FSDP2: set fsdp_version: 2 in the accelerate config")
    if _zero_stage(accelerator) == 3:
        _register_head_weight(objective)
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        # DeepSpeed sizes its logs (not the batches: softprompt's core hands it every batch) by this.
        if not isinstance(config.get("train_micro_batch_size_per_gpu"), int):
            config["train_micro_batch_size_per_gpu"] = 1
    return accelerator.prepare(objective, optimizer)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average each parameter's gradient over the ``world`` processes after every backward pass.

    Summed, then divided (gloo has no average). A gradient accumulated over micro-batches is
    averaged at each of them, which averages the sum: identical halves stay identical.
    """
    if world == 1:
        return

    def hook(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad)
        param.grad.div_(world)

    for param in params:
        param.register_post_accumulate_grad_hook(hook)


def keep_last_layer_for_backward(root: nn.Module) -> None:
    """Keep the last FSDP unit inside ``root`` (the last decoder layer) gathered after its backward:
    the virtual-token pass's gradient reaches it once more at the end of backward."""
    units = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    if units:
        units[-1].set_reshard_after_backward(False, recurse=False)


@contextlib.contextmanager
def unsharded(root: nn.Module) -> Iterator[nn.Module]:
    """Gather what calls that do not go through the prepared objective's ``forward`` read outside
    their own module's forward — scoring with ``objective.scores``, ``generate`` — and shard it after.

    FSDP2: the root's own parameters (embeddings, head, norm); layers wrapped on their own gather
    themselves when called. ZeRO-3 (a DeepSpeed engine): the output head's weight, which a classifier
    reads for its label words. No-op for a model nothing shards.
    """
    if isinstance(root, FSDPModule):
        root.unshard()
        try:
            yield root
        finally:
            root.reshard()
        return
    objective = getattr(root, "module", root)  # a DeepSpeed engine holds the objective as .module
    head = objective.model.get_output_embeddings() if hasattr(objective, "model") else None
    if head is None or not is_zero3(head.weight):
        yield root
        return
    # Gathered, and marked persistent meanwhile: a tied embedding runs inside the call and would
    # otherwise partition the shared weight again when its forward ends.
    weight, persist = head.weight, head.weight.ds_persist
    with whole_parameters(head):
        weight.ds_persist = True
        try:
            yield root
        finally:
            weight.ds_persist = persist


def _register_head_weight(objective: nn.Module) -> None:
    """ZeRO-3 gathers a parameter only in its own module's forward; a classifier reads the output
    head's rows for its label words without calling the head, so the head's weight is registered as
    used by the objective's forward too."""
    import deepspeed

    head = objective.model.get_output_embeddings()
    if head is not None:
        deepspeed.zero.register_external_parameter(objective, head.weight)


def _fsdp_version(accelerator: Any) -> int | None:
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or str(accelerator.distributed_type) != "DistributedType.FSDP":
        return None
    return plugin.fsdp_version


def _zero_stage(accelerator: Any) -> int | None:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or str(accelerator.distributed_type) != "DistributedType.DEEPSPEED":
        return None
    return plugin.zero_stage
