"""Python glue of the native branched-rollout engine and the native SAC actor.

:func:`run_native_rollout` runs a whole MBPO branched rollout in ONE call of the active
backend (``_backend.ops.branched_rollout``: C++ with the GIL released, or the Numba mirror):
start states from the real pool, ``horizon`` steps of SAC action -> one random elite ->
termination, transitions appended straight into the model pool. The exact algorithm and
randomness are documented in ``csrc/include/mbpo_fast/rollout.h``.

The weights are borrowed (zero-copy numpy views of the live torch parameters), so the call
always uses the current policy and model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend
from ._numba.rollout import (
    DISAGREEMENT_ALL,
    DISAGREEMENT_AUTO,
    DISAGREEMENT_AUTO_STRIDE,
    disagreement_sample_rows,
)

__all__ = ["actor_act", "actor_params", "disagreement_rule", "disagreement_sample_rows",
           "model_params", "resolve_termination", "run_native_rollout"]


def disagreement_rule(disagreement_rows: Any) -> int:
    """The engines' integer rule for a user's ``disagreement_rows``: ``"auto"`` (one stored
    row in 256 at each step, at least one: ~1 % of the rollout's arithmetic), ``"all"``
    (every stored row: ~E times the rollout's model arithmetic), or a count >= 0 of rows per
    step (0: off). Raises ValueError naming the argument for anything else."""
    if isinstance(disagreement_rows, str):
        rules = {"auto": DISAGREEMENT_AUTO, "all": DISAGREEMENT_ALL}
        if disagreement_rows in rules:
            return rules[disagreement_rows]
    elif isinstance(disagreement_rows, (int, np.integer)) and not isinstance(disagreement_rows,
                                                                           bool):
        if disagreement_rows >= 0:
            return int(disagreement_rows)
    raise ValueError("disagreement_rows: expected 'auto' (one stored row in "
                     f"{DISAGREEMENT_AUTO_STRIDE} per step), 'all' or an int >= 0, got "
                     f"{disagreement_rows!r}")


def actor_params(agent: Any) -> dict[str, Any]:
    """The actor arguments of the native ops from a :class:`mbpo_fast.SAC` agent: zero-copy
    layer views (``agent.actor_weights()``: weight [1, in, out], bias [1, out]),
    ``action_scale``, ``action_bias`` and the exact action box the agent clamps to."""
    layers = agent.actor_weights()
    params: dict[str, Any] = {
        "actor_weights": [w for w, _ in layers],
        "actor_biases": [b for _, b in layers],
        "action_scale": _f32(agent.action_scale),
        "action_bias": _f32(agent.action_bias),
    }
    low, high = getattr(agent, "_low_np", None), getattr(agent, "_high_np", None)
    if low is not None and high is not None:
        params["action_low"], params["action_high"] = _f32(low), _f32(high)
    return params


def model_params(model: Any) -> dict[str, Any]:
    """The ensemble arguments of the native ops from an :class:`mbpo_fast.EnsembleDynamics`
    (through its ``inference`` adapter) or an
    :class:`mbpo_fast.ensemble_infer.EnsembleInference`; includes its packed bf16 weights
    when ``use_bf16()`` was called (the rollout then runs the opt-in bf16 kernels)."""
    inf = model if hasattr(model, "input_mean") and hasattr(model, "weights") else model.inference
    return {"input_mean": inf.input_mean, "input_std": inf.input_std, "weights": inf.weights,
            "biases": inf.biases, "max_logvar": inf.max_logvar, "min_logvar": inf.min_logvar,
            "elites": inf.elites, "weights_bf16": getattr(inf, "weights_bf16", None)}


def resolve_termination(termination: Any) -> int | Any:
    """A built-in termination id (int) for an env id string, a built-in termination function
    (``mf.termination_fn(env_id)``, which carries ``native_id``) or an int id; any other
    callable ``(obs, act, next_obs) -> bool [n]`` is returned as is (the slower path: the
    engine calls it once per step with the alive rows)."""
    if isinstance(termination, str):
        return int(_backend.ops.termination_id(termination))
    native_id = getattr(termination, "native_id", None)
    if native_id is not None:
        return int(native_id)
    if isinstance(termination, (int, np.integer)) and not isinstance(termination, bool):
        return int(termination)
    if callable(termination):
        return termination
    raise TypeError("termination: expected an env id (str), a built-in termination id (int) or "
                    "a callable (obs, act, next_obs) -> bool [n], got "
                    f"{type(termination).__name__}")


def run_native_rollout(model: Any, agent: Any, termination: Any, real_pool: Any, model_pool: Any,
                       num_starts: int, horizon: int, seed: int,
                       compute_disagreement: bool = True,
                       disagreement_rows: int | str = "auto",
                       max_disagreement: float = float("inf"),
                       disagreement_quantile: float = -1.0,
                       uncertainty_penalty: float = 0.0) -> dict[str, float | int]:
    """One MBPO branched rollout in a single native call; appends to ``model_pool``.

    Args:
        model: EnsembleDynamics (or EnsembleInference); its elites are the members sampled.
        agent: SAC agent (CPU); actions are stochastic policy samples.
        termination: env id, built-in termination function / id, a learned
            :class:`mbpo_fast.TerminationModel` (run natively), or a custom callable.
        real_pool, model_pool: :class:`mbpo_fast.ReplayPool` (or their backend ``_impl``) of
            the active backend, with the model's obs/act dims; may be the same pool.
        num_starts: start states drawn uniformly (with replacement) from the real pool.
        horizon: steps per rollout (the horizon end is a truncation, not terminal).
        seed: drives start states, actions, members and model noise (see rollout.h).
        compute_disagreement: also compute ``mean_disagreement`` (one forward of every
            elite per measured row); NaN otherwise.
        disagreement_rows: rows of each step it is measured on (see
            :func:`disagreement_rule`): ``"auto"`` (one stored row in 256, at least one),
            ``"all"``, or the first ``n`` stored rows (the engines' integer rules -1 / -2 are
            accepted too). Start rows are drawn uniformly and alive rows keep their order, so
            these are a random subset of the visited pairs; the default keeps the statistic's
            cost (every elite's forward per measured row) near 1 % of the rollout.
        max_disagreement: stop threshold on d (rollout.h step 4); inf: no stop.
        disagreement_quantile: in [0, 1]: the threshold is that quantile of d over step 0's
            rows (overrides max_disagreement); negative: unused.
        uncertainty_penalty: >= 0; stored reward ``r - uncertainty_penalty * sqrt(d)``.

    Returns:
        dict: ``num_starts``, ``rows_added``, ``mean_length`` (stored steps per start row),
        ``frac_terminated``, ``num_terminated``, ``nonfinite`` (rows dropped),
        ``mean_disagreement``, ``disagreement_rows`` (rows it was measured on), ``steps_run``,
        ``seconds``, and for the uncertainty features ``num_stopped``, ``frac_stopped``,
        ``mean_uncertainty`` (mean d over stored rows; NaN when off), ``mean_penalty``,
        ``disagreement_threshold`` (NaN when the stop is off).
    """
    # A learned TerminationModel runs natively inside the rollout (its MLP weights are passed).
    learned = termination.native_params() if hasattr(termination, "native_params") else {}
    return _backend.ops.branched_rollout(
        getattr(real_pool, "_impl", real_pool), getattr(model_pool, "_impl", model_pool),
        termination=0 if learned else resolve_termination(termination), **learned,
        num_starts=int(num_starts),
        horizon=int(horizon), seed=int(seed), compute_disagreement=bool(compute_disagreement),
        disagreement_rows=_rule(disagreement_rows),
        max_disagreement=float(max_disagreement),
        disagreement_quantile=float(disagreement_quantile),
        uncertainty_penalty=float(uncertainty_penalty),
        **actor_params(agent), **model_params(model))


def _rule(disagreement_rows: Any) -> int:
    """disagreement_rule, also passing the engines' integer rules (-1, -2) through."""
    if isinstance(disagreement_rows, (int, np.integer)) \
            and not isinstance(disagreement_rows, bool) \
            and disagreement_rows in (DISAGREEMENT_ALL, DISAGREEMENT_AUTO):
        return int(disagreement_rows)
    return disagreement_rule(disagreement_rows)


def actor_act(agent: Any, obs: Any, seed: int, deterministic: bool = False,
              noise_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The agent's policy run natively: obs [B, obs_dim] -> (act f32 [B, act_dim],
    log_prob f32 [B]). Noise of element j of row i: ``random_normal(seed,
    STREAM_POLICY_NOISE, noise_offset + i * act_dim + j)`` (reproducible, unlike
    ``agent.act`` which draws from the agent's torch generator)."""
    p = actor_params(agent)
    return _backend.ops.actor_act(
        obs, p["actor_weights"], p["actor_biases"], p["action_scale"], p["action_bias"],
        seed=int(seed), noise_offset=int(noise_offset), deterministic=bool(deterministic),
        action_low=p.get("action_low"), action_high=p.get("action_high"))


def _f32(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
