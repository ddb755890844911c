"""Native branched rollout vs an mbrl-lib-style Python/torch rollout loop, Hopper sizes.

Run:  PYTHONPATH=. pytest benchmarks/bench_rollout.py --benchmark-only -s
      PYTHONPATH=. python benchmarks/bench_rollout.py        # markdown table only

Sizes: obs 11, act 3, ensemble 7 members x 4 hidden SiLU layers of 200 (5 elites), SAC actor
2 x 256 ReLU. Cases: num_starts 100,000 with horizon 1 and 5, and 400 with horizon 1.

Candidate: ``mf.BranchedRollout(model, agent, "Hopper-v5").run(...)`` with its defaults, as a
user calls it (one native call: start sampling, actor, one elite per row, Hopper termination,
compaction, appends to the model pool, the disagreement statistic on its default sample of
one stored row in 256; GIL released). Beside it, not instead of it: the same call with the
statistic off (``disagreement_rows=0``) and with the opt-in bf16 model weights. The
statistic's cost is the median per-round ratio of default / statistic-off calls timed in
adjacent blocks (order swapped every round).
Reference "mbrl-lib style": a compact transcription of mbrl-lib's MBPO rollout code path
(``rollout_model_and_populate_sac_buffer`` with ReplayBuffer, ModelEnv,
OneDTransitionRewardModel, GaussianMLP "random_model" propagation with per-call elite weight
gathering, the Normalizer, termination_fns.hopper, SACAgent over pytorch_sac_pranz24's
GaussianPolicy); like mbrl-lib it keeps stepping rows that are done and masks them at
``add_batch``. Reference "lean torch": the same loop with the Python layers stripped (elite
weights pre-gathered, one baddbmm per layer, mbpo_fast.SAC.act), to show the margin over
plain torch as well.

All three are timed in turn in one process (blocks of calls, repeated); medians and ratios
are reported with effective GFLOP/s (ensemble 255,200 + actor 139,776 FLOP per stepped row)
and the matmul canary rate before and after (tools/matmul_canary.py).
"""

from __future__ import annotations

# First, as in a user's program: importing mbpo_fast sets how long torch's idle OpenMP
# workers spin before torch starts (mbpo_fast/_openmp.py). No tuning variable is set here.
import mbpo_fast  # noqa: F401

# isort: split

# Measured in the environment a user has: no OpenMP tuning variable is set here; importing
# mbpo_fast first sets the library's own (mbpo_fast/_openmp.py). Runs recorded before
# 2026-12-04 set GOMP_SPINCOUNT=20000 in the benchmark itself.
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import mbpo_fast as mf  # noqa: E402
from mbpo_fast.ensemble_infer import EnsembleInference  # noqa: E402
from mbpo_fast.sac import SAC  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary import canary_gflops  # noqa: E402

OD, AD, E, K, HID, NLAYERS = 11, 3, 7, 5, 200, 4
WIDTHS = [OD + AD] + [HID] * NLAYERS + [2 * (OD + 1)]
ENS_FLOP = 2 * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True))  # 255,200
ACTOR_FLOP = 2 * (OD * 256 + 256 * 256 + 256 * 2 * AD)  # 139,776
ROW_FLOP = ENS_FLOP + ACTOR_FLOP
REAL_ROWS = 200_000
CAPACITY = 1_000_000


# ----------------------------------------------------------------------------- setup

def hopper_states(rng: np.random.Generator, n: int) -> np.ndarray:
    obs = (0.5 * rng.standard_normal((n, OD))).astype(np.float32)
    obs[:, 0] = rng.uniform(1.1, 1.4, n)
    obs[:, 1] = rng.uniform(-0.08, 0.08, n)
    return obs


def as_dynamics(inf: EnsembleInference) -> mf.EnsembleDynamics:
    """An EnsembleDynamics (what users pass to BranchedRollout) holding `inf`'s weights."""
    model = mf.EnsembleDynamics(OD, AD, ensemble_size=E, num_elites=K, hidden_size=HID,
                                num_layers=NLAYERS, seed=0)
    with torch.no_grad():
        for layer, w, b in zip(model.layers, inf.weights, inf.biases, strict=True):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
        model.max_logvar.copy_(torch.from_numpy(inf.max_logvar))
        model.min_logvar.copy_(torch.from_numpy(inf.min_logvar))
    model.set_elites(list(map(int, inf.elites)))
    return model


def make_model(seed: int = 0) -> EnsembleInference:
    """Random 7 x 4 x 200 ensemble with small Δobs, so most Hopper rows stay healthy."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for a, b in zip(WIDTHS[:-1], WIDTHS[1:], strict=True):
        weights.append((rng.standard_normal((E, a, b)) / math.sqrt(a)).astype(np.float32))
        biases.append((0.05 * rng.standard_normal((E, b))).astype(np.float32))
    weights[-1][:, :, :OD + 1] *= 0.01
    biases[-1][:, :OD + 1] *= 0.1
    return EnsembleInference(
        OD, AD, np.zeros(OD + AD, np.float32), np.ones(OD + AD, np.float32), weights, biases,
        np.full(OD + 1, -6.0, np.float32), np.full(OD + 1, -10.0, np.float32),
        np.arange(K, dtype=np.int64))


# ----------------------------------------------------------------------------- mbrl-lib style
# A faithful, compact transcription of the code path of mbrl-lib's MBPO rollout
# (mbrl/algorithms/mbpo.py: rollout_model_and_populate_sac_buffer) with its classes:
# util.ReplayBuffer (numpy storage, rng.choice sampling, np.copyto add_batch), models.ModelEnv
# + OneDTransitionRewardModel + GaussianMLP (EnsembleLinearLayer with use_only_elite weight
# gathering, "random_model" propagation, torch.normal sampling), the Normalizer,
# env.termination_fns.hopper, and planning.SACAgent over pytorch_sac_pranz24's GaussianPolicy
# (torch.distributions.Normal, log-prob computed as part of sample()).


class ReplayBuffer:
    """mbrl.util.ReplayBuffer: preallocated numpy arrays, FIFO ring."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.obs = np.empty((capacity, OD), np.float32)
        self.next_obs = np.empty((capacity, OD), np.float32)
        self.action = np.empty((capacity, AD), np.float32)
        self.reward = np.empty(capacity, np.float32)
        self.terminated = np.empty(capacity, bool)
        self.truncated = np.empty(capacity, bool)
        self.capacity, self.cur_idx, self.num_stored = capacity, 0, 0
        self._rng = np.random.default_rng(seed)

    def add_batch(self, obs, action, next_obs, reward, terminated, truncated) -> None:
        def copy_from_to(buffer_start, batch_start, how_many):
            buffer_slice = slice(buffer_start, buffer_start + how_many)
            batch_slice = slice(batch_start, batch_start + how_many)
            np.copyto(self.obs[buffer_slice], obs[batch_slice])
            np.copyto(self.action[buffer_slice], action[batch_slice])
            np.copyto(self.reward[buffer_slice], reward[batch_slice])
            np.copyto(self.next_obs[buffer_slice], next_obs[batch_slice])
            np.copyto(self.terminated[buffer_slice], terminated[batch_slice])
            np.copyto(self.truncated[buffer_slice], truncated[batch_slice])

        _batch_start = 0
        if self.cur_idx + len(obs) > self.capacity:
            copy_from_to(self.cur_idx, _batch_start, self.capacity - self.cur_idx)
            _batch_start = self.capacity - self.cur_idx
            self.cur_idx = 0
            self.num_stored = self.capacity
        _how_many = len(obs) - _batch_start
        copy_from_to(self.cur_idx, _batch_start, _how_many)
        self.cur_idx = (self.cur_idx + _how_many) % self.capacity
        self.num_stored = min(self.num_stored + _how_many, self.capacity)

    def sample(self, batch_size: int):
        indices = self._rng.choice(self.num_stored, size=batch_size)
        return (self.obs[indices], self.action[indices], self.next_obs[indices],
                self.reward[indices], self.terminated[indices], self.truncated[indices])


class EnsembleLinearLayer(torch.nn.Module):
    def __init__(self, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.from_numpy(weight))
        self.bias = torch.nn.Parameter(torch.from_numpy(bias)[:, None, :])
        self.elite_models = None
        self.use_only_elite = False

    def forward(self, x):
        if self.use_only_elite:
            xw = x.matmul(self.weight[self.elite_models, ...])
            return xw + self.bias[self.elite_models, ...]
        return x.matmul(self.weight) + self.bias


class GaussianMLP(torch.nn.Module):
    """mbrl.models.GaussianMLP with propagation_method="random_model"."""

    def __init__(self, inf: EnsembleInference) -> None:
        super().__init__()
        layers = []
        for w, b in zip(inf.weights[:-1], inf.biases[:-1], strict=True):
            layers += [EnsembleLinearLayer(w, b), torch.nn.SiLU()]
        self.hidden_layers = torch.nn.Sequential(*layers)
        self.mean_and_logvar = EnsembleLinearLayer(inf.weights[-1], inf.biases[-1])
        self.min_logvar = torch.nn.Parameter(torch.from_numpy(inf.min_logvar))
        self.max_logvar = torch.nn.Parameter(torch.from_numpy(inf.max_logvar))
        self.out_size = OD + 1
        self.elite_models = list(map(int, inf.elites))

    def _maybe_toggle_layers_use_only_elite(self, only_elite: bool) -> None:
        for layer in self.modules():
            if isinstance(layer, EnsembleLinearLayer):
                layer.elite_models = self.elite_models
                layer.use_only_elite = only_elite

    def _default_forward(self, x, only_elite=False):
        self._maybe_toggle_layers_use_only_elite(only_elite)
        x = self.hidden_layers(x)
        mean_and_logvar = self.mean_and_logvar(x)
        self._maybe_toggle_layers_use_only_elite(False)
        mean = mean_and_logvar[..., : self.out_size]
        logvar = mean_and_logvar[..., self.out_size:]
        logvar = self.max_logvar - torch.nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + torch.nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def _forward_from_indices(self, x, model_indices):
        _, batch_size, _ = x.shape
        num_models = len(self.elite_models)
        shuffled_x = x[:, model_indices, ...].view(num_models, batch_size // num_models, -1)
        mean, logvar = self._default_forward(shuffled_x, only_elite=True)
        mean = mean.view(batch_size, -1)
        mean[model_indices] = mean.clone()
        logvar = logvar.view(batch_size, -1)
        logvar[model_indices] = logvar.clone()
        return mean, logvar

    def forward(self, x):
        if x.shape[0] % len(self.elite_models) != 0:
            raise ValueError("batch size must be a multiple of the number of elites")
        x = x.unsqueeze(0)
        model_indices = torch.randperm(x.shape[1], device=x.device)
        return self._forward_from_indices(x, model_indices)

    def sample_1d(self, model_input, model_state, rng=None):
        means, logvars = self.forward(model_input)
        stds = torch.sqrt(logvars.exp())
        return torch.normal(means, stds, generator=rng), model_state


class Normalizer:
    def __init__(self, inf: EnsembleInference) -> None:
        self.mean = torch.from_numpy(inf.input_mean)
        self.std = torch.from_numpy(inf.input_std)

    def normalize(self, val):
        if isinstance(val, np.ndarray):
            val = torch.from_numpy(val)
        return (val - self.mean) / self.std


def hopper_termination(act, next_obs):  # mbrl.env.termination_fns.hopper
    assert len(next_obs.shape) == 2
    height, angle = next_obs[:, 0], next_obs[:, 1]
    not_done = (torch.isfinite(next_obs).all(-1) * (next_obs[:, 1:].abs() < 100).all(-1)
                * (height > 0.7) * (angle.abs() < 0.2))
    return (~not_done)[:, None]


class ModelEnv:
    """mbrl.models.ModelEnv over OneDTransitionRewardModel(GaussianMLP), target_is_delta."""

    def __init__(self, inf: EnsembleInference, seed: int = 0) -> None:
        self.model = GaussianMLP(inf)
        self.input_normalizer = Normalizer(inf)
        self._rng = torch.Generator().manual_seed(seed)

    def reset(self, initial_obs_batch: np.ndarray):
        obs = torch.from_numpy(initial_obs_batch.astype(np.float32))
        indices = torch.randperm(obs.shape[0], generator=self._rng)
        return {"obs": obs, "propagation_indices": indices}

    def _sample(self, act, model_state):  # OneDTransitionRewardModel.sample
        obs = model_state["obs"]
        model_in = self.input_normalizer.normalize(torch.cat([obs, act], dim=obs.ndim - 1))
        preds, next_model_state = self.model.sample_1d(model_in, model_state, rng=self._rng)
        next_observs = preds[:, :-1] + obs
        rewards = preds[:, -1:]
        next_model_state["obs"] = next_observs
        return next_observs, rewards, next_model_state

    def step(self, actions, model_state):
        assert len(actions.shape) == 2
        with torch.no_grad():
            if isinstance(actions, np.ndarray):
                actions = torch.from_numpy(actions)
            next_observs, rewards, next_model_state = self._sample(actions, model_state)
            dones = hopper_termination(actions, next_observs)
            return (next_observs.cpu().numpy(), rewards.cpu().numpy(), dones.cpu().numpy(),
                    next_model_state)


class GaussianPolicy(torch.nn.Module):
    """pytorch_sac_pranz24.model.GaussianPolicy with the agent's weights (2 x 256 ReLU)."""

    def __init__(self, agent: SAC) -> None:
        super().__init__()
        w = [layer.weight.detach()[0] for layer in agent.actor.layers]
        b = [layer.bias.detach()[0] for layer in agent.actor.layers]
        self.linear1 = torch.nn.Linear(OD, 256)
        self.linear2 = torch.nn.Linear(256, 256)
        self.mean_linear = torch.nn.Linear(256, AD)
        self.log_std_linear = torch.nn.Linear(256, AD)
        with torch.no_grad():
            self.linear1.weight.copy_(w[0].T)
            self.linear1.bias.copy_(b[0])
            self.linear2.weight.copy_(w[1].T)
            self.linear2.bias.copy_(b[1])
            self.mean_linear.weight.copy_(w[2][:, :AD].T)
            self.mean_linear.bias.copy_(b[2][:AD])
            self.log_std_linear.weight.copy_(w[2][:, AD:].T)
            self.log_std_linear.bias.copy_(b[2][AD:])
        self.action_scale = agent.action_scale.clone()
        self.action_bias = agent.action_bias.clone()

    def forward(self, state):
        x = torch.nn.functional.relu(self.linear1(state))
        x = torch.nn.functional.relu(self.linear2(x))
        mean = self.mean_linear(x)
        log_std = torch.clamp(self.log_std_linear(x), min=-20, max=2)
        return mean, log_std

    def sample(self, state):
        mean, log_std = self.forward(state)
        std = log_std.exp()
        normal = torch.distributions.Normal(mean, std)
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t)
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        log_prob = log_prob.sum(1, keepdim=True)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean


class SACAgent:
    """mbrl.planning.SACAgent.act -> pranz24 SAC.select_action(batched=True)."""

    def __init__(self, agent: SAC) -> None:
        self.policy = GaussianPolicy(agent)

    def act(self, obs: np.ndarray, sample: bool = True, batched: bool = True) -> np.ndarray:
        with torch.no_grad():
            state = torch.FloatTensor(obs)
            if not batched:
                state = state.unsqueeze(0)
            if sample:
                action, _, _ = self.policy.sample(state)
            else:
                _, _, action = self.policy.sample(state)
            return action.detach().cpu().numpy()


def mbrl_rollout(model_env: ModelEnv, replay_buffer: ReplayBuffer, agent: SACAgent,
                 sac_buffer: ReplayBuffer, rollout_horizon: int, batch_size: int) -> int:
    """mbrl-lib's rollout_model_and_populate_sac_buffer; returns rows stepped."""
    initial_obs, *_ = replay_buffer.sample(batch_size)
    model_state = model_env.reset(initial_obs)
    accum_dones = np.zeros(initial_obs.shape[0], dtype=bool)
    obs = initial_obs
    for _ in range(rollout_horizon):
        action = agent.act(obs, sample=True, batched=True)
        pred_next_obs, pred_rewards, pred_dones, model_state = model_env.step(action, model_state)
        truncateds = np.zeros_like(pred_dones, dtype=bool)
        sac_buffer.add_batch(obs[~accum_dones], action[~accum_dones], pred_next_obs[~accum_dones],
                             pred_rewards[~accum_dones, 0], pred_dones[~accum_dones, 0],
                             truncateds[~accum_dones, 0])
        obs = pred_next_obs
        accum_dones |= pred_dones.squeeze()
    return batch_size * rollout_horizon


# ----------------------------------------------------------------------------- lean torch
# The same loop with the Python layers removed (for transparency: how fast plain torch gets).


class LeanTorchModel:
    """One baddbmm per layer over the rows split across the elites; no module machinery."""

    def __init__(self, inf: EnsembleInference, seed: int = 0) -> None:
        self.mean = torch.from_numpy(inf.input_mean)
        self.std = torch.from_numpy(inf.input_std)
        el = torch.from_numpy(inf.elites)
        self.w = [torch.from_numpy(w)[el].contiguous() for w in inf.weights]  # pre-gathered
        self.b = [torch.from_numpy(b)[el].unsqueeze(1).contiguous() for b in inf.biases]
        self.max_lv = torch.from_numpy(inf.max_logvar)
        self.min_lv = torch.from_numpy(inf.min_logvar)
        self.gen = torch.Generator().manual_seed(seed)

    def step(self, obs_np: np.ndarray, act_np: np.ndarray):
        with torch.no_grad():
            obs, act = torch.from_numpy(obs_np), torch.from_numpy(act_np)
            x = (torch.cat([obs, act], 1) - self.mean) / self.std
            n = x.shape[0]
            perm = torch.randperm(n, generator=self.gen)
            h = x[perm].view(K, n // K, -1)
            last = len(self.w) - 1
            for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
                h = torch.baddbmm(b, h, w)
                if i != last:
                    h = torch.nn.functional.silu(h)
            mu, raw = h[..., :OD + 1], h[..., OD + 1:]
            lv = self.max_lv - torch.nn.functional.softplus(self.max_lv - raw)
            lv = self.min_lv + torch.nn.functional.softplus(lv - self.min_lv)
            sample = mu + torch.randn(mu.shape, generator=self.gen) * torch.exp(0.5 * lv)
            out = torch.empty(n, OD + 1)
            out[perm] = sample.reshape(n, OD + 1)
            next_obs = obs + out[:, :OD]
            done = hopper_termination(act, next_obs)
            return next_obs.numpy(), out[:, OD:].numpy(), done.numpy()


def lean_rollout(model: LeanTorchModel, agent: SAC, real: ReplayBuffer, pool: ReplayBuffer,
                 num_starts: int, horizon: int) -> int:
    obs = real.sample(num_starts)[0]
    accum_dones = np.zeros(num_starts, dtype=bool)
    for _ in range(horizon):
        action = agent.act(obs)  # mbpo_fast.SAC.act: addmm layers, no distribution objects
        next_obs, rew, done = model.step(obs, action)
        keep = ~accum_dones
        n = int(keep.sum())
        pool.add_batch(obs[keep], action[keep], next_obs[keep], rew[keep, 0], done[keep, 0],
                       np.zeros(n, bool))
        obs = next_obs
        accum_dones |= done[:, 0]
    return num_starts * horizon


_SETUP: dict[str, dict] = {}


def setup() -> dict:
    if not _SETUP:
        torch.set_num_threads(2)
        rng = np.random.default_rng(0)
        model = make_model()
        agent = SAC(OD, AD, -np.ones(AD), np.ones(AD), hidden_size=256, num_layers=2, seed=0)
        states = hopper_states(rng, REAL_ROWS)
        zeros_a, zeros_r = np.zeros((REAL_ROWS, AD), np.float32), np.zeros(REAL_ROWS, np.float32)
        no = np.zeros(REAL_ROWS, bool)
        real = mf.ReplayPool(REAL_ROWS, OD, AD, seed=0)
        real.add_batch(states, zeros_a, zeros_r, states, no)
        ref_real = ReplayBuffer(REAL_ROWS)
        ref_real.add_batch(states, zeros_a, states, zeros_r, no, no)
        dynamics = as_dynamics(model)
        dynamics_bf16 = as_dynamics(model)  # the same weights, opt-in bf16 kernels (DESIGN §7)
        dynamics_bf16.use_bf16(True)
        _SETUP.update(model=model, agent=agent, real=real, ref_real=ref_real,
                      rollout=mf.BranchedRollout(dynamics, agent, "Hopper-v5"),
                      rollout_off=mf.BranchedRollout(dynamics, agent, "Hopper-v5",
                                                     disagreement_rows=0),
                      rollout_bf16=mf.BranchedRollout(dynamics_bf16, agent, "Hopper-v5"),
                      model_pool=mf.ReplayPool(CAPACITY, OD, AD), mbrl_pool=ReplayBuffer(CAPACITY),
                      lean_pool=ReplayBuffer(CAPACITY), model_env=ModelEnv(model),
                      sac_agent=SACAgent(agent), lean_model=LeanTorchModel(model))
    return _SETUP




# ----------------------------------------------------------------------------- cases

RESULTS: dict[str, dict] = {}


def run_case(num_starts: int, horizon: int, rounds: int, number: int = 1, benchmark=None) -> dict:
    """Times native / mbrl-lib-style / lean torch in turn (blocks of `number` calls each,
    `rounds` times) and returns medians per call. Blocks rather than single calls at small
    sizes: torch's OpenMP workers spin for a while after each parallel region and would
    otherwise steal a core from whichever call runs next."""
    st = setup()
    seeds = iter(range(1_000_000))
    stepped: dict[str, float] = {}

    def run(key: str, rollout: mf.BranchedRollout) -> None:
        s = rollout.run(st["real"], st["model_pool"], num_starts, horizon, next(seeds))
        stepped[key] = s.rows_added + s.nonfinite
        stepped[f"{key}_frac_terminated"] = s.frac_terminated

    def native():
        run("native", st["rollout"])

    def native_off():
        run("native_off", st["rollout_off"])

    def native_bf16():
        run("native_bf16", st["rollout_bf16"])

    def mbrl():
        stepped["mbrl"] = mbrl_rollout(st["model_env"], st["ref_real"], st["sac_agent"],
                                       st["mbrl_pool"], horizon, num_starts)

    def lean():
        stepped["lean"] = lean_rollout(st["lean_model"], st["agent"], st["ref_real"],
                                       st["lean_pool"], num_starts, horizon)

    fns = {"native": native, "native_off": native_off, "native_bf16": native_bf16, "mbrl": mbrl,
           "lean": lean}
    before = canary_gflops(2)
    for f in fns.values():  # warm up (allocations, page faults, torch kernels)
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            times[k].append((time.perf_counter() - t0) / number)
    # The statistic's cost: default vs statistic-off calls alternating directly (order
    # swapped every round), so neither follows the torch references of the loop above
    # (a native call right after torch work pays torch's idle workers; docs/threads.md).
    ratios = []
    for r in range(rounds):
        pair = (native, native_off) if r % 2 == 0 else (native_off, native)
        block: dict[object, float] = {}
        for f in pair:
            t0 = time.perf_counter()
            for _ in range(number):
                f()
            block[f] = (time.perf_counter() - t0) / number
        per_row_on = block[native] / stepped["native"]
        ratios.append(per_row_on / (block[native_off] / stepped["native_off"]))
    after = canary_gflops(2)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"num_starts": num_starts, "horizon": horizon, "rounds": rounds, "number": number,
           "frac_terminated": stepped["native_frac_terminated"],
           "canary_before_gflops": before, "canary_after_gflops": after}
    for k in fns:
        res[f"{k}_s"] = med[k]
        res[f"{k}_rows_stepped"] = stepped[k]
        res[f"{k}_gflops"] = stepped[k] * ROW_FLOP / med[k] / 1e9
    res["speedup_vs_mbrl"] = med["mbrl"] / med["native"]
    res["speedup_vs_lean"] = med["lean"] / med["native"]
    res["bf16_speedup_vs_mbrl"] = med["mbrl"] / med["native_bf16"]
    # what the default disagreement statistic costs (per stepped row), from the adjacent pairs
    res["statistic_cost"] = statistics.median(ratios) - 1.0
    RESULTS[f"{num_starts:,} x {horizon}"] = res
    if benchmark is not None:
        benchmark.extra_info.update(res)
        benchmark.pedantic(native, rounds=1, iterations=1)
    return res


def test_rollout_100k_h1(benchmark):
    run_case(100_000, 1, 5, benchmark=benchmark)


def test_rollout_100k_h5(benchmark):
    run_case(100_000, 5, 3, benchmark=benchmark)


def test_rollout_400_h1(benchmark):
    run_case(400, 1, 15, number=20, benchmark=benchmark)


def table() -> str:
    lines = ["| num_starts x horizon | native (ms) | mbrl-lib style (ms) | lean torch (ms) | "
             "speedup vs mbrl-lib style | vs lean torch | GFLOP/s native / mbrl / lean | "
             "rows stepped native / torch | frac terminated | canary before / after | "
             "native, bf16 model weights (ms) | bf16 speedup vs mbrl-lib style | "
             "native, statistic off (ms) | statistic's cost |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in RESULTS.items():
        lines.append(
            f"| {name} | {1e3 * r['native_s']:.2f} | {1e3 * r['mbrl_s']:.2f} | "
            f"{1e3 * r['lean_s']:.2f} | **{r['speedup_vs_mbrl']:.2f}x** | "
            f"{r['speedup_vs_lean']:.2f}x | {r['native_gflops']:.0f} / {r['mbrl_gflops']:.0f} / "
            f"{r['lean_gflops']:.0f} | {r['native_rows_stepped']:,} / {r['mbrl_rows_stepped']:,} | "
            f"{r['frac_terminated']:.3f} | {r['canary_before_gflops']:.0f} / "
            f"{r['canary_after_gflops']:.0f} | {1e3 * r['native_bf16_s']:.2f} | "
            f"{r['bf16_speedup_vs_mbrl']:.2f}x | {1e3 * r['native_off_s']:.2f} | "
            f"{100 * r['statistic_cost']:+.1f} % |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _print_table():
    yield
    if RESULTS:
        print("\n" + table())


if __name__ == "__main__":
    run_case(400, 1, 15, number=20)
    run_case(100_000, 1, 5)
    run_case(100_000, 5, 3)
    print(f"threads: native {mf._backend.ops.num_threads()}, torch {torch.get_num_threads()}; "
          f"kernel {mf._backend.ops.ensemble_kernel()}")
    print(table())
