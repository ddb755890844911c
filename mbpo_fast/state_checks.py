"""Checks of a saved state against the object it is about to be loaded into.

``nn.Module.load_state_dict`` copies tensor after tensor and reports a wrong shape only after
copying the ones before it, and ``Optimizer.load_state_dict`` does not compare the Adam
moments with the parameters at all (a wrong one surfaces at the next step, inside a native
kernel for the native trainers). The loaders of :class:`~mbpo_fast.SAC` and
:class:`~mbpo_fast.EnsembleDynamics` run these checks over the WHOLE state first, so a state
with one bad tensor raises a ValueError naming it, with the expected and the actual shape,
and changes nothing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

_ADAM_KEYS = frozenset({"step", "exp_avg", "exp_avg_sq"})
_ADAM_NUMBERS = frozenset({"lr", "betas", "eps", "weight_decay"})
# Adam options that change the update rule (or need state this file does not hold)
_SEMANTIC_FLAGS = ("amsgrad", "maximize", "decoupled_weight_decay", "differentiable",
                   "capturable")


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)} {x.dtype}"
    return f"a {type(x).__name__}"


def check_tensor(source: str, name: str, value: Any, shape: Sequence[int],
                 dtype: torch.dtype, minimum: float | None = None) -> None:
    """Raises ValueError unless `value` is a tensor of `shape` and `dtype`, with finite
    values (floating dtypes; >= `minimum` when given)."""
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) \
            or value.dtype != dtype:
        raise ValueError(f"{source}: tensor {name}: expected shape {tuple(shape)} {dtype}, "
                         f"got {_describe(value)}")
    if dtype.is_floating_point and value.numel():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source}: tensor {name} contains non-finite values")
        if minimum is not None and float(value.min()) < minimum:
            raise ValueError(f"{source}: tensor {name} has values < {minimum}")


def check_module_state(source: str, name: str, saved: Any, module: torch.nn.Module) -> None:
    """`saved` must hold exactly `module`'s state_dict keys, each of the same shape/dtype."""
    expected = module.state_dict()
    if not isinstance(saved, Mapping):
        raise ValueError(f"{source}: {name}: expected a state dict, got {_describe(saved)}")
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: {name}: missing tensors {missing}, unexpected "
                         f"{[str(k) for k in extra][:8]}")
    for key, ref in expected.items():
        check_tensor(source, f"{name}[{key!r}]", saved[key], ref.shape, ref.dtype)


def _real(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and x.dtype.is_floating_point and bool(torch.isfinite(x).all())
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _same_number(a: Any, b: Any) -> bool:
    """a == b for numbers (0-dim tensors too) or pairs of them."""
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(
            _same_number(x, y) for x, y in zip(a, b, strict=True))
    return _real(a) and float(a) == float(b)


def check_adam_state(source: str, name: str, saved: Any, optim: torch.optim.Optimizer) -> None:
    """`saved` must be an Adam state_dict for `optim`'s parameters: the same number of groups
    and parameters per group; the same options as `optim` (betas, eps, weight decay, amsgrad,
    ...) but the learning rate (restored from the file: finite, > 0, one per optimizer) and
    the implementation (foreach / fused); per parameter nothing or all of ``step`` (a 0-dim
    float32 tensor >= 0), ``exp_avg`` and ``exp_avg_sq`` (the parameter's shape and dtype)."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) \
            or not isinstance(saved.get("param_groups"), (list, tuple)):
        raise ValueError(f"{source}: {name}: expected an optimizer state dict "
                         f"({{'state': ..., 'param_groups': [...]}})")
    groups = optim.param_groups
    if len(saved["param_groups"]) != len(groups):
        raise ValueError(f"{source}: {name}: {len(saved['param_groups'])} parameter groups, "
                         f"expected {len(groups)}")
    params: dict[Any, torch.Tensor] = {}
    groups_of: dict[Any, dict] = {}
    lrs: set[float] = set()
    for g, (sg, group) in enumerate(zip(saved["param_groups"], groups, strict=True)):
        ids = sg.get("params") if isinstance(sg, Mapping) else None
        if not isinstance(ids, (list, tuple)) or len(ids) != len(group["params"]):
            raise ValueError(f"{source}: {name}: parameter group {g} lists "
                             f"{len(ids) if isinstance(ids, (list, tuple)) else ids!r} "
                             f"parameters, expected {len(group['params'])}")
        extra = sorted(map(str, set(sg) - set(group) - {"initial_lr"}))
        if extra:
            raise ValueError(f"{source}: {name}: group {g} has unknown options {extra[:8]}")
        missing = sorted(_ADAM_NUMBERS - set(sg))  # (Adam's __setstate__ fills in the flags)
        if missing:
            raise ValueError(f"{source}: {name}: group {g} lacks the options {missing}")
        for key in _SEMANTIC_FLAGS:  # flags that change the algorithm: must be this one's
            if key in sg and sg[key] is not group.get(key, False):
                raise ValueError(f"{source}: {name}: group {g} {key} = {sg[key]!r}, this "
                                 f"optimizer has {group.get(key, False)!r}")
        for key in ("foreach", "fused"):
            if key in sg and sg[key] not in (None, True, False):
                raise ValueError(f"{source}: {name}: group {g} {key} = {sg[key]!r} is not a "
                                 f"bool or None")
        for key in ("eps", "weight_decay", "betas"):  # constants of this code, not of a file
            if key in sg and not _same_number(sg[key], group[key]):
                raise ValueError(f"{source}: {name}: group {g} {key} = {sg[key]!r}, this "
                                 f"optimizer has {group[key]!r}")
        lr = sg.get("lr", group["lr"])
        if not (_real(lr) and float(lr) > 0):
            raise ValueError(f"{source}: {name}: group {g} lr = {lr!r} is not a finite "
                             f"number > 0")
        lrs.add(float(lr))
        for pid, p in zip(ids, group["params"], strict=True):
            if not isinstance(pid, int) or isinstance(pid, bool) or pid in params:
                raise ValueError(f"{source}: {name}: parameter id {pid!r} is not a distinct int")
            params[pid] = p
            groups_of[pid] = group
    if len(lrs) > 1:  # every optimizer here steps its groups at one rate (native trainers too)
        raise ValueError(f"{source}: {name}: parameter groups with different lr {sorted(lrs)}")
    for pid, st in saved["state"].items():
        if pid not in params:
            raise ValueError(f"{source}: {name}: state for unknown parameter id {pid!r}")
        p = params[pid]
        where = f"{name} state[{pid}]"
        if not isinstance(st, Mapping) or set(st) not in (set(), _ADAM_KEYS):  # all or nothing
            keys = sorted(map(str, st)) if isinstance(st, Mapping) else _describe(st)
            raise ValueError(f"{source}: {where}: expected Adam state {sorted(_ADAM_KEYS)}, "
                             f"got {keys}")
        for key in ("exp_avg", "exp_avg_sq") if st else ():
            check_tensor(source, f"{where}[{key!r}]", st[key], p.shape, p.dtype,
                         minimum=0.0 if key == "exp_avg_sq" else None)
        if st:
            _check_moments(source, where, st["exp_avg"], st["exp_avg_sq"], groups_of[pid])
        if st:  # as torch's Adam and the native trainers keep it: a 0-dim float32
            check_tensor(source, f"{where}['step']", st["step"], (), torch.float32, minimum=0.0)


def check_generator_state(source: str, name: str, saved: Any,
                          generator: torch.Generator) -> None:
    """`saved` must be a state `generator` accepts (checked on a scratch generator)."""
    ref = generator.get_state()
    check_tensor(source, name, saved, ref.shape, ref.dtype)
    try:
        torch.Generator(device=generator.device).set_state(saved.cpu())
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{source}: {name}: not a valid generator state ({exc})") from None


def _check_moments(source: str, where: str, m: torch.Tensor, v: torch.Tensor,
                   group: Mapping[str, Any]) -> None:
    """Adam's moments bound each other: m = (1-b1) sum b1^k g_k and v = (1-b2) sum b2^k g_k^2
    give |m| <= (1-b1) / sqrt((1-b2) (1-b1^2/b2)) * sqrt(v) (Cauchy-Schwarz; 7.3 sqrt(v) for
    the default betas), so every update step |m| / (sqrt(v) + eps) is bounded. A moment past
    twice that bound (+ eps for float underflow) is no Adam state: a corrupt value that would
    blow the next update up to inf/NaN."""
    b1, b2 = (float(b) for b in group["betas"])
    if not (0 <= b1 < 1 and 0 < b2 < 1 and b1 * b1 < b2):
        return
    c = 2 * (1 - b1) / math.sqrt((1 - b2) * (1 - b1 * b1 / b2))
    excess = m.abs().double() - c * (v.double().sqrt() + float(group["eps"]))
    if m.numel() and float(excess.max()) > 0:
        i = int(excess.argmax())
        raise ValueError(f"{source}: tensor {where}['exp_avg'] = {float(m.flatten()[i]):g} at "
                         f"flat index {i} exceeds what Adam allows for its exp_avg_sq "
                         f"({float(v.flatten()[i]):g}): a corrupt value")


def copy_adam_state(saved: Mapping[str, Any]) -> dict:
    """A deep copy of a checked Adam state dict whose tensors are contiguous copies (what the
    native trainers require; a saved view may have any strides, even zero ones)."""
    def copy(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().clone(memory_format=torch.contiguous_format)
        if isinstance(x, Mapping):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(copy(v) for v in x)
        return x

    return copy(saved)
