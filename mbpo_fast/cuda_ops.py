"""CUDA paths of the ensemble ops and the device-resident replay pool.

torch CUDA tensors in, torch CUDA tensors out: inputs are borrowed through ``data_ptr()``
(objects exposing ``__cuda_array_interface__`` are wrapped by ``torch.as_tensor`` without a
copy), outputs are allocated by torch's caching allocator, and every kernel is enqueued on
the caller's current stream (``torch.cuda.current_stream(device).cuda_stream``), so the
ops order correctly with the caller's torch work and nothing synchronizes except where
documented (``ReplayPool.add_batch`` validates on the device and waits for that result;
``EnsembleDynamics.step`` with explicit ``members`` checks their range).

Validation happens here, at the boundary: device, dtype, contiguity and shape, with
errors naming the argument (TypeError for a wrong type/dtype, ValueError otherwise).

The kernels live in ``csrc/cuda`` (see ``csrc/include/mbpo_fast/cuda_ops.h``). Without a
CUDA build or a device, :func:`available` is False and the entry points raise
RuntimeError with the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from . import _backend

__all__ = [
    "CudaEnsemble",
    "CudaTermination",
    "branched_rollout",
    "mpc_evaluate",
    "mpc_plan",
    "CudaPool",
    "as_cuda_tensor",
    "available",
    "require",
    "sample_mixed",
]


def _native():
    return _backend.get("native") if "native" in _backend.available() else None


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when the native extension was compiled with CUDA and a CUDA device is present
    (checked once per process: it sits on every device call's path)."""
    native = _native()
    return bool(
        native is not None
        and native.build_info()["cuda_compiled"]
        and native.cuda_device_count() > 0
    )


def require(what: str):
    """The native module, or RuntimeError saying why the CUDA path cannot run."""
    native = _native()
    if native is None:
        raise RuntimeError(f"{what}: needs the native extension mbpo_fast._C (not importable)")
    if not native.build_info()["cuda_compiled"]:
        raise RuntimeError(
            f"{what}: mbpo_fast was built without CUDA (MBPO_FAST_CUDA=OFF or no nvcc); "
            "rebuild with nvcc on PATH"
        )
    if native.cuda_device_count() < 1:
        raise RuntimeError(f"{what}: no CUDA device is available")
    return native


def is_cuda_tensor(value) -> bool:
    """True for a torch tensor on a CUDA device (what selects the device paths)."""
    return bool(getattr(value, "is_cuda", False)) and hasattr(value, "data_ptr")


def as_cuda_tensor(name: str, value, shape: Sequence[int | None], dtype=None, device=None):
    """Borrows `value` as a C-contiguous CUDA tensor of `dtype` (default float32) and `shape`
    (None = any size). Accepts torch CUDA tensors and objects with
    ``__cuda_array_interface__`` (wrapped zero-copy). Never copies: a wrong device, dtype,
    shape or layout raises, naming the argument."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(value, torch.Tensor):
        if hasattr(value, "__cuda_array_interface__"):
            # no device argument: the tensor stays on the object's own device (zero-copy);
            # device="cuda" would copy an object living on another GPU to the current one
            value = torch.as_tensor(value)
        else:
            raise TypeError(
                f"{name}: expected a torch CUDA tensor (or an object with "
                f"__cuda_array_interface__), got {type(value).__name__}"
            )
    if not value.is_cuda:
        raise ValueError(f"{name}: expected a CUDA tensor, got device {value.device}")
    if device is not None:
        want = torch.device(device)
        if want.index is None:  # "cuda" means the current device
            want = torch.device("cuda", torch.cuda.current_device())
        if value.device != want:
            raise ValueError(f"{name}: expected a tensor on {want}, got {value.device}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {value.dtype}")
    got = tuple(value.shape)
    if len(got) != len(shape) or any(
        e is not None and e != g for e, g in zip(shape, got, strict=False)
    ):
        want = (
            "("
            + ", ".join("*" if e is None else str(e) for e in shape)
            + ("," if len(shape) == 1 else "")
            + ")"
        )
        raise ValueError(f"{name}: expected shape {want}, got {got}")
    if not value.is_contiguous():
        raise ValueError(
            f"{name}: expected a C-contiguous tensor (device inputs are borrowed, never copied)"
        )
    return value


def _stream(device) -> int:
    import torch

    return torch.cuda.current_stream(device).cuda_stream


# ---------------------------------------------------------------------------- ensemble


class CudaEnsemble:
    """Device adapter of an :class:`~mbpo_fast.EnsembleDynamics` whose parameters live on a
    CUDA device: borrows their device pointers (in-place updates are seen by the next call;
    replacing a parameter object or changing the elites needs a new adapter, which the model
    does for you) and runs the fused kernels of ``csrc/cuda/ensemble_step.cu``."""

    def __init__(self, model) -> None:
        import torch

        self._native = require("EnsembleDynamics on CUDA")
        self.device = model.input_mean.device  # with its index ("cuda" -> "cuda:0")
        self.obs_dim, self.act_dim = model.obs_dim, model.act_dim
        self.ensemble_size = model.ensemble_size
        params = [model.input_mean, model.input_std, model.max_logvar, model.min_logvar]
        for layer in model.layers:
            params += [layer.weight, layer.bias]
        for p in params:  # parameters of a model built on the device are contiguous float32
            if not (p.is_cuda and p.dtype == torch.float32 and p.is_contiguous()):
                raise RuntimeError("EnsembleDynamics: CUDA parameters must be contiguous float32")
            if p.device != self.device:  # the kernels dereference every pointer on one device
                raise RuntimeError(
                    f"EnsembleDynamics: every CUDA parameter must be on {self.device}, "
                    f"found one on {p.device}"
                )
        widths = [model.in_dim] + [int(layer.weight.shape[2]) for layer in model.layers]
        self._params = params  # keeps the tensors alive as long as the view
        self.elites = [int(i) for i in model.elite_index.tolist()]
        self.view = self._native.CudaEnsembleView(
            self.obs_dim,
            self.act_dim,
            self.ensemble_size,
            widths,
            model.input_mean.data_ptr(),
            model.input_std.data_ptr(),
            [layer.weight.data_ptr() for layer in model.layers],
            [layer.bias.data_ptr() for layer in model.layers],
            model.max_logvar.data_ptr(),
            model.min_logvar.data_ptr(),
            self.elites,
        )

    def _rows(self, obs, act):
        single = getattr(obs, "ndim", None) == 1
        if single:
            obs = as_cuda_tensor("obs", obs, (self.obs_dim,), device=self.device)[None]
            act = as_cuda_tensor("act", act, (self.act_dim,), device=self.device)[None]
        else:
            obs = as_cuda_tensor("obs", obs, (None, self.obs_dim), device=self.device)
            act = as_cuda_tensor("act", act, (obs.shape[0], self.act_dim), device=self.device)
        return obs, act, single

    def _members(self, members, batch: int):
        import torch

        if members is None:
            return None
        if isinstance(members, torch.Tensor):
            if (
                members.dtype.is_floating_point
                or members.dtype.is_complex
                or members.dtype == torch.bool
            ):
                raise TypeError(
                    f"members: expected integer member indices, got dtype {members.dtype}"
                )
            m = members.to(self.device, torch.int64)
        else:
            arr = np.asarray(members)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"members: expected integer member indices, got dtype {arr.dtype}")
            m = torch.as_tensor(arr.astype(np.int64), device=self.device)
        if m.ndim == 0:
            m = m.expand(batch)
        if tuple(m.shape) != (batch,):
            raise ValueError(
                f"members: expected shape ({batch},) or a scalar, got {tuple(m.shape)}"
            )
        m = m.contiguous()
        bad = (m < 0) | (m >= self.ensemble_size)
        if bool(bad.any()):  # one sync, only when members are given
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"members: entry {i} = {int(m[i])} is out of range [0, {self.ensemble_size})"
            )
        return m

    def _empty(self, *shape, dtype=None):
        """An uninitialized float32 (or ``dtype``) tensor of ``shape`` on the model's device."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        return torch.empty(shape, device=self.device, dtype=dtype)

    def _launch(self, op, *args, workspace: int | None = None) -> None:
        """``op(view, *args[, workspace ptr, workspace bytes], stream)`` on the model's device
        and current stream; ``workspace`` bytes of fresh device scratch when not None."""
        import torch

        tail = ()
        if workspace is not None:
            work = self._empty(max(workspace, 1), dtype=torch.uint8)
            tail = (work.data_ptr(), workspace)
        with torch.cuda.device(self.device):
            op(self.view, *args, *tail, _stream(self.device))

    def step(self, obs, act, seed: int = 0, deterministic: bool = False, members=None):
        """(next_obs f32 [B, obs_dim], reward f32 [B], members_used int64 [B]) on the device;
        the same member choices and Philox noise as the CPU backend."""
        import torch

        obs, act, single = self._rows(obs, act)
        batch = obs.shape[0]
        mem = self._members(members, batch)
        out = (self._empty(batch, self.obs_dim), self._empty(batch),
               self._empty(batch, dtype=torch.int64))
        self._launch(self._native.cuda_ensemble_step, obs.data_ptr(), act.data_ptr(), batch,
                     int(seed), bool(deterministic), 0 if mem is None else mem.data_ptr(),
                     *(t.data_ptr() for t in out),
                     workspace=self._native.cuda_ensemble_step_workspace_bytes(
                         batch, self.ensemble_size))
        return tuple(t[0] for t in out) if single else out

    def step_uncertainty(self, obs, act, seed: int = 0, deterministic: bool = False):
        """(next_obs f32 [B, obs_dim], reward f32 [B], d f32 [B]) on the device: the transition
        of :meth:`step` (same members and Philox noise) and the disagreement d (mean over the obs
        dims of the unbiased variance across the elites of their predicted mean next state),
        from ONE forward of every elite per row (needs >= 2 elites)."""
        if len(self.elites) < 2:
            raise ValueError(
                "elites: the disagreement d (unbiased variance across the elites) needs at least "
                f"2 elites, got {len(self.elites)}"
            )
        obs, act, single = self._rows(obs, act)
        batch = obs.shape[0]
        out = (self._empty(batch, self.obs_dim), self._empty(batch), self._empty(batch))
        self._launch(self._native.cuda_ensemble_step_uncertainty, obs.data_ptr(), act.data_ptr(),
                     batch, int(seed), bool(deterministic), *(t.data_ptr() for t in out),
                     workspace=self._native.cuda_ensemble_step_uncertainty_workspace_bytes(
                         batch, len(self.elites), self.obs_dim))
        return tuple(t[0] for t in out) if single else out

    def predict(self, obs, act):
        """(mean, var) f32 [E, B, obs_dim + 1] on the device."""
        obs, act, single = self._rows(obs, act)
        batch = obs.shape[0]
        mean = self._empty(self.ensemble_size, batch, self.obs_dim + 1)
        var = self._empty(self.ensemble_size, batch, self.obs_dim + 1)
        self._launch(self._native.cuda_ensemble_predict, obs.data_ptr(), act.data_ptr(), batch,
                     mean.data_ptr(), var.data_ptr())
        return (mean[:, 0], var[:, 0]) if single else (mean, var)

    def disagreement(self, obs, act, members=None):
        """f32 [B] on the device (population std across `members` of the means, averaged)."""
        obs, act, single = self._rows(obs, act)
        batch = obs.shape[0]
        mem = self.elites if members is None else [int(m) for m in np.asarray(members).reshape(-1)]
        out = self._empty(batch)
        self._launch(self._native.cuda_ensemble_disagreement, obs.data_ptr(), act.data_ptr(), batch,
                     mem, out.data_ptr(),
                     workspace=self._native.cuda_ensemble_disagreement_workspace_bytes(
                         batch, len(mem), self.obs_dim))
        return out[0] if single else out


# ---------------------------------------------------------------------------- pool


class CudaPool:
    """The implementation behind ``ReplayPool(..., device="cuda")``: the same method names as
    the native pool, tensors on the device. Draws are the CPU pool's
    (``random_index(seed, STREAM_POOL_SAMPLE, rng_counter + k, len)``)."""

    def __init__(
        self, capacity: int, obs_dim: int, act_dim: int, seed: int = 0, device="cuda"
    ) -> None:
        import torch

        native = require("ReplayPool(device='cuda')")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"device: expected a CUDA device, got {device!r}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(self.device):
            self._impl = native.CudaReplayPool(capacity, obs_dim, act_dim, seed)
        self._native = native

    # properties the ReplayPool wrapper reads
    size = property(lambda self: self._impl.size)
    capacity = property(lambda self: self._impl.capacity)
    obs_dim = property(lambda self: self._impl.obs_dim)
    act_dim = property(lambda self: self._impl.act_dim)
    seed = property(lambda self: self._impl.seed)
    rng_counter = property(lambda self: self._impl.rng_counter)
    write_pos = property(lambda self: self._impl.write_pos)
    nbytes = property(lambda self: self._impl.nbytes)

    def _input(self, name: str, value, shape):
        """A contiguous float32 tensor on the pool's device: zero-copy when it already is one,
        else converted (like the CPU pool converts float64 / non-contiguous inputs)."""
        import torch

        if not isinstance(value, torch.Tensor):
            if hasattr(value, "__cuda_array_interface__"):
                value = torch.as_tensor(value, device=self.device)
            else:
                arr = np.asarray(value)
                if arr.dtype.kind not in "fiub":
                    raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
                value = torch.from_numpy(np.ascontiguousarray(arr))
        if value.dtype.is_complex:
            raise TypeError(f"{name}: expected a real numeric dtype, got {value.dtype}")
        value = value.to(self.device, torch.float32).contiguous()
        got = tuple(value.shape)
        if got != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {got}")
        return value

    def _terminated(self, value, n: int):
        import torch

        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(np.asarray(value))
        if value.dtype == torch.bool:
            value = value.to(self.device).contiguous().view(torch.uint8)
        elif value.dtype.is_floating_point or value.dtype.is_complex:
            raise TypeError(f"terminated: expected bool (or 0/1 integers), got dtype {value.dtype}")
        else:
            # check before narrowing to uint8 (256 would wrap to 0); bool needs no check
            if value.numel() and bool(((value < 0) | (value > 1)).any()):
                raise ValueError("terminated: values must be 0 or 1")
            value = value.to(self.device, torch.uint8).contiguous()
        if tuple(value.shape) != (n,):
            raise ValueError(f"terminated: expected shape ({n},), got {tuple(value.shape)}")
        return value

    def add_batch(self, obs, act, rew, next_obs, terminated) -> None:
        import torch

        od, ad = self.obs_dim, self.act_dim
        if not hasattr(obs, "shape") or len(obs.shape) != 2:
            raise ValueError(
                f"obs: expected shape (*, {od}), got {tuple(getattr(obs, 'shape', ()))}"
            )
        n = int(obs.shape[0])
        o = self._input("obs", obs, (n, od))
        a = self._input("act", act, (n, ad))
        r = self._input("rew", rew, (n,))
        no = self._input("next_obs", next_obs, (n, od))
        t = self._terminated(terminated, n)
        if n == 0:
            return
        with torch.cuda.device(self.device):
            self._impl.add_batch(
                o.data_ptr(),
                a.data_ptr(),
                r.data_ptr(),
                no.data_ptr(),
                t.data_ptr(),
                n,
                _stream(self.device),
            )

    def add(self, obs, act, rew, next_obs, terminated) -> None:
        import torch

        def row(x):
            return x.reshape(1, -1) if isinstance(x, torch.Tensor) else np.asarray(x).reshape(1, -1)

        rew_t = rew.reshape(1) if isinstance(rew, torch.Tensor) else np.asarray([rew])
        term_t = (
            terminated.reshape(1)
            if isinstance(terminated, torch.Tensor)
            else np.asarray([bool(terminated)])
        )
        self.add_batch(row(obs), row(act), rew_t, row(next_obs), term_t)

    def _outputs(self, n: int):
        import torch

        kw = {"device": self.device}
        return (
            torch.empty((n, self.obs_dim), dtype=torch.float32, **kw),
            torch.empty((n, self.act_dim), dtype=torch.float32, **kw),
            torch.empty((n,), dtype=torch.float32, **kw),
            torch.empty((n, self.obs_dim), dtype=torch.float32, **kw),
            torch.empty((n,), dtype=torch.bool, **kw),
        )

    @staticmethod
    def _ptrs(outs):
        return [o.data_ptr() for o in outs]

    def sample(self, batch_size: int, num_batches: int | None = None):
        import torch

        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, (int, np.integer))
            or batch_size < 0
        ):
            raise ValueError(f"batch_size: expected an int >= 0, got {batch_size!r}")
        k = 1 if num_batches is None else int(num_batches)
        if k < 1:
            raise ValueError(f"num_batches: expected num_batches >= 1, got {num_batches!r}")
        n = int(batch_size) * k
        outs = self._outputs(n)
        with torch.cuda.device(self.device):
            self._impl.sample(n, *self._ptrs(outs), _stream(self.device))
        if num_batches is not None:
            outs = tuple(o.reshape(k, int(batch_size), *o.shape[1:]) for o in outs)
        return outs

    def sample_obs(self, n: int):
        return self.sample(n)[0]

    def transitions(self):
        import torch

        outs = self._outputs(self.size)
        with torch.cuda.device(self.device):
            self._impl.transitions(*self._ptrs(outs), _stream(self.device))
        return outs

    def peek_indices(self, n: int) -> np.ndarray:
        """int64 [n] (host): the rows the next n draws return (computed with the CPU Philox)."""
        if n < 0:
            raise ValueError(f"n: expected n >= 0, got {n}")
        if n and self.size == 0:
            raise ValueError("sample: the pool is empty (add transitions before sampling)")
        native = self._native
        words = native.philox_fill_u32(self.seed, native.STREAM_POOL_SAMPLE, self.rng_counter, n)
        return ((words.astype(np.uint64) * np.uint64(self.size)) >> np.uint64(32)).astype(np.int64)

    def clear(self) -> None:
        self._impl.clear()

    def resize(self, new_capacity: int) -> None:
        """Keeps the newest min(len, new_capacity) rows in order (as the CPU pool); waits for
        the copy (the old storage is freed)."""
        import torch

        if isinstance(new_capacity, bool) or not isinstance(new_capacity, (int, np.integer)):
            raise TypeError(f"new_capacity: expected an int, got {type(new_capacity).__name__}")
        with torch.cuda.device(self.device):
            self._impl.resize(int(new_capacity), _stream(self.device))

    def gather(self, rows):
        """Copies of logical rows `rows` (int [n], 0 = oldest; each in [0, len)) as device
        tensors, like the CPU pool's gather. `rows` may be a host array or a tensor; the range
        check costs one sync (as ``members`` of the ensemble step)."""
        import torch

        if isinstance(rows, torch.Tensor):
            if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
                raise TypeError(f"rows: expected an integer array, got {rows.dtype}")
            idx = rows.to(self.device, torch.int64)
        else:
            arr = np.asarray(rows)
            if arr.dtype.kind not in "iu":
                raise TypeError(f"rows: expected an integer array, got {arr.dtype}")
            if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
                raise ValueError(f"rows: expected row indices in [0, {self.size}), got {arr.max()}")
            idx = torch.as_tensor(arr.astype(np.int64), device=self.device)
        if idx.ndim != 1:
            raise ValueError(f"rows: expected shape (n,), got {tuple(idx.shape)}")
        idx = idx.contiguous()
        n = int(idx.shape[0])
        if n:
            bad = (idx < 0) | (idx >= self.size)
            if bool(bad.any()):  # one sync; the kernel never reads outside the storage anyway
                i = int(torch.nonzero(bad)[0, 0])
                raise ValueError(
                    f"rows: expected row indices in [0, {self.size}), got {int(idx[i])} "
                    f"at position {i}"
                )
        outs = self._outputs(n)
        if n:
            with torch.cuda.device(self.device):
                self._impl.gather(idx.data_ptr(), n, *self._ptrs(outs), _stream(self.device))
        return outs

    def save(self, path) -> None:
        """Writes the CPU pool's file format (csrc/include/mbpo_fast/replay_pool.h) through
        the host: one device-to-host copy of the stored rows (waits for it), then the CPU
        pool's atomic writer. A CPU pool (or Numba) loads the file, and vice versa."""
        import os

        import torch

        with torch.cuda.device(self.device):
            self._impl.save(os.fspath(path), _stream(self.device))

    @classmethod
    def load(cls, path, device="cuda") -> CudaPool:
        """Reads a pool file written by any backend onto `device` (the CPU pool's reader,
        then one host-to-device copy; waits for it)."""
        import os

        import torch

        native = require("ReplayPool.load(device='cuda')")
        dev = torch.device(device)
        if dev.type != "cuda":
            raise ValueError(f"device: expected a CUDA device, got {device!r}")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        pool = cls.__new__(cls)
        pool.device = dev
        pool._native = native
        with torch.cuda.device(dev):
            pool._impl = native.CudaReplayPool.load(os.fspath(path), _stream(dev))
        return pool


def sample_mixed(
    real: CudaPool,
    model: CudaPool,
    batch_size: int,
    real_ratio: float,
    num_batches: int | None = None,
):
    """sample_mixed of two device pools: the CPU version's draws and counter updates."""
    import torch

    if real.device != model.device:
        raise ValueError(
            f"model_pool: expected the device of real_pool ({real.device}), got {model.device}"
        )
    k = 1 if num_batches is None else int(num_batches)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size: expected batch_size >= 1, got {batch_size!r}")
    if k < 1:
        raise ValueError(f"num_batches: expected num_batches >= 1, got {num_batches!r}")
    outs = real._outputs(int(batch_size) * k)
    with torch.cuda.device(real.device):
        real._native.cuda_sample_mixed(
            real._impl,
            model._impl,
            int(batch_size),
            float(real_ratio),
            k,
            *CudaPool._ptrs(outs),
            _stream(real.device),
        )
    if num_batches is not None:
        outs = tuple(o.reshape(k, int(batch_size), *o.shape[1:]) for o in outs)
    return outs


# ---------------------------------------------------------------------------- termination


class CudaTermination:
    """Device copy of a learned :class:`~mbpo_fast.TerminationModel` (its weights are CPU
    torch tensors; this copies them to ``device`` once) and its view for the kernels."""

    def __init__(self, term_model, device) -> None:
        import torch

        self._native = require("learned termination on CUDA")
        self.device = torch.device(device)
        p = term_model.native_params()
        up = lambda x: torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)).to(  # noqa: E731
            self.device
        )
        self.input_mean = up(p["termination_input_mean"])
        self.input_std = up(p["termination_input_std"])
        self.weights = [up(w) for w in p["termination_weights"]]
        self.biases = [up(b) for b in p["termination_biases"]]
        self.obs_dim, self.act_dim = int(term_model.obs_dim), int(term_model.act_dim)
        widths = [int(self.weights[0].shape[0])] + [int(w.shape[1]) for w in self.weights]
        self.view = self._native.CudaTerminationMLPView(
            self.obs_dim,
            self.act_dim,
            widths,
            self.input_mean.data_ptr(),
            self.input_std.data_ptr(),
            [w.data_ptr() for w in self.weights],
            [b.data_ptr() for b in self.biases],
        )

    def __call__(self, obs, act, next_obs):
        """(terminated bool [B], logits f32 [B]) on the device for CUDA tensors obs, next_obs
        [B, obs_dim], act [B, act_dim]."""
        import torch

        obs = as_cuda_tensor("obs", obs, (None, self.obs_dim), device=self.device)
        n = obs.shape[0]
        act = as_cuda_tensor("act", act, (n, self.act_dim), device=self.device)
        next_obs = as_cuda_tensor("next_obs", next_obs, (n, self.obs_dim), device=self.device)
        out = torch.empty((n,), device=self.device, dtype=torch.uint8)
        logits = torch.empty((n,), device=self.device, dtype=torch.float32)
        with torch.cuda.device(self.device):
            self._native.cuda_termination_mlp(
                self.view,
                obs.data_ptr(),
                act.data_ptr(),
                next_obs.data_ptr(),
                n,
                out.data_ptr(),
                logits.data_ptr(),
                _stream(self.device),
            )
        return out.bool(), logits


# ---------------------------------------------------------------------------- rollout


def branched_rollout(
    model,
    agent,
    termination,
    real_pool,
    model_pool,
    num_starts: int,
    horizon: int,
    seed: int = 0,
    max_disagreement: float = float("inf"),
    disagreement_quantile: float = -1.0,
    uncertainty_penalty: float = 0.0,
) -> dict:
    """One MBPO branched rollout entirely on the device (csrc/cuda/rollout.cu).

    model: a CUDA :class:`~mbpo_fast.EnsembleDynamics`; agent: a CUDA :class:`~mbpo_fast.SAC`;
    termination: an env id, a built-in termination function or id, or a learned
    :class:`~mbpo_fast.TerminationModel` (its weights are copied to the device per call and it
    runs there at every step; other callables are CPU-only); real_pool, model_pool:
    ``ReplayPool(..., device="cuda")`` on the model's device (may be the same pool). The
    algorithm and the random numbers are those of the CPU engine
    (csrc/include/mbpo_fast/rollout.h): same start states, actions, members, noise and order of
    the appended rows. No host round trip per step; one sync at the end for the statistics.
    max_disagreement (inf: no stop), disagreement_quantile (in [0, 1]: the threshold is that
    quantile of d over step 0's rows; < 0: unused) and uncertainty_penalty (>= 0) are the
    uncertainty features of rollout.h step 4, as in the CPU engine (need >= 2 elites).
    Returns the CPU engine's statistics dict (``mean_disagreement`` is NaN: not computed on
    the device yet).
    """
    import torch

    from .rollout_native import resolve_termination
    from .sac import LOG_STD_MAX, LOG_STD_MIN

    native = require("branched rollout on CUDA")
    learned = hasattr(termination, "native_params")
    term = 0 if learned else resolve_termination(termination)
    if not isinstance(term, int):
        raise TypeError(
            "termination: the device rollout runs the built-in termination functions and a "
            "learned mf.TerminationModel only (an env id, mf.termination_fn(env_id) or a "
            "TerminationModel); use the CPU engine for custom callables"
        )
    pools = []
    for name, pool in (("real_pool", real_pool), ("model_pool", model_pool)):
        impl = getattr(pool, "_impl", pool)
        if not isinstance(impl, CudaPool):
            raise TypeError(
                f"{name}: expected a ReplayPool(..., device='cuda'), got {type(pool).__name__}"
            )
        pools.append(impl)
    real, dest = pools
    ens = model._cuda_native() if hasattr(model, "_cuda_native") else None
    if ens is None or getattr(model, "device", torch.device("cpu")).type != "cuda":
        raise TypeError("model: expected an EnsembleDynamics on a CUDA device")
    if ens.device != real.device or dest.device != real.device:
        raise ValueError(
            f"model_pool, real_pool: expected the model's device {ens.device}, got "
            f"{real.device} and {dest.device}"
        )
    layers = getattr(getattr(agent, "actor", None), "layers", None)
    if layers is None or getattr(agent, "device", torch.device("cpu")).type != "cuda":
        raise TypeError("agent: expected a SAC agent on a CUDA device")
    weights, biases = [], []
    for i, layer in enumerate(layers):
        w = as_cuda_tensor(
            f"actor.layers[{i}].weight", layer.weight.detach(), (1, None, None), device=real.device
        )
        b = as_cuda_tensor(
            f"actor.layers[{i}].bias", layer.bias.detach(), (1, w.shape[2]), device=real.device
        )
        weights.append(w)
        biases.append(b)
    widths = [int(weights[0].shape[1])] + [int(w.shape[2]) for w in weights]
    host = lambda x: np.ascontiguousarray(  # noqa: E731
        x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32
    )
    low, high = getattr(agent, "_low_np", None), getattr(agent, "_high_np", None)
    term_dev = None
    if learned:
        if (termination.obs_dim, termination.act_dim) != (ens.obs_dim, ens.act_dim):
            raise ValueError(
                f"termination: the TerminationModel has obs_dim {termination.obs_dim} and act_dim "
                f"{termination.act_dim}, the model {ens.obs_dim} and {ens.act_dim}"
            )
        term_dev = CudaTermination(termination, real.device)  # alive until the final sync
    with torch.cuda.device(real.device):
        return native.cuda_branched_rollout(
            real._impl,
            dest._impl,
            ens.view,
            [w.data_ptr() for w in weights],
            [b.data_ptr() for b in biases],
            widths,
            host(agent.action_scale),
            host(agent.action_bias),
            None if low is None else host(low),
            None if high is None else host(high),
            LOG_STD_MIN,
            LOG_STD_MAX,
            term,
            int(num_starts),
            int(horizon),
            int(seed),
            _stream(real.device),
            max_disagreement=float(max_disagreement),
            disagreement_quantile=float(disagreement_quantile),
            uncertainty_penalty=float(uncertainty_penalty),
            termination_mlp=None if term_dev is None else term_dev.view,
        )


# ---------------------------------------------------------------------------- planner

_OPTIMIZER_IDS = {"cem": 0, "random": 1}
_PROPAGATION_IDS = {"ts_inf": 0, "ts_1": 1}


def _planning_model(model):
    """The CudaEnsemble adapter of a CUDA EnsembleDynamics (RuntimeError without a CUDA build or
    device, TypeError for anything else)."""
    import torch

    native = require("MPC planning with a CUDA model")
    if getattr(model, "device", torch.device("cpu")).type != "cuda" or not hasattr(
        model, "_cuda_native"
    ):
        raise TypeError("model: expected an EnsembleDynamics on a CUDA device")
    return native, model._cuda_native()


def _builtin_ids(reward: int, termination: int) -> tuple[int, int]:
    if not isinstance(reward, int) or not isinstance(termination, int):
        raise TypeError(
            "reward_fn / termination: the CUDA planner runs the model's reward or a built-in "
            "reward and termination (env ids) on the device; a Python callable needs the rows "
            "on the host: plan with a CPU model for callables"
        )
    return reward, termination


def mpc_plan(model, obs, mean, action_low, action_high, reward: int, termination: int,
             optimizer: str, population: int, num_elites: int, iterations: int, alpha: float,
             particles: int, propagation: str, horizon: int, seed: int, call: int):
    """One MPC plan (planner.h) with the particle rollouts on the model's device
    (csrc/cuda/planner.cu): the CPU planner's candidates, member choices and noise for the same
    seed. Host numpy in and out: (action f32 [act_dim], final mean f32 [horizon, act_dim],
    stats dict)."""
    import torch

    native, ens = _planning_model(model)
    reward, termination = _builtin_ids(reward, termination)
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    call_seed = native.derive_seed(int(seed), native.STREAM_PLAN_SEED, int(call))
    with torch.cuda.device(ens.device):
        return native.cuda_mpc_plan(
            ens.view, f32(obs), f32(mean), f32(action_low), f32(action_high), reward, termination,
            _OPTIMIZER_IDS[optimizer], int(population), int(num_elites), int(iterations),
            float(alpha), int(particles), _PROPAGATION_IDS[propagation], int(horizon), call_seed,
            _stream(ens.device))


def mpc_evaluate(model, obs, actions, reward: int, termination: int, particles: int,
                 propagation: str, seed: int):
    """plan_evaluate with the particle rollouts on the device: (values f64 [N], members int64
    [H, N * particles]) on the host."""
    import torch

    native, ens = _planning_model(model)
    reward, termination = _builtin_ids(reward, termination)
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
    with torch.cuda.device(ens.device):
        return native.cuda_mpc_evaluate(
            ens.view, f32(obs), f32(actions), reward, termination, int(particles),
            _PROPAGATION_IDS[propagation], int(seed), _stream(ens.device))
