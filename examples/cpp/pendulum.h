// The gymnasium Pendulum-v1 simulator in C++, shared by the examples (no Python).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "mbpo_fast/rng.h"

namespace example {

constexpr double kPi = 3.14159265358979323846;  // (M_PI is not standard C++)

// gymnasium Pendulum-v1: state (theta, theta_dot), theta = 0 upright; obs (cos, sin, theta_dot);
// torque clipped to [-2, 2]; reward -(angle^2 + 0.1 theta_dot^2 + 0.001 u^2); never terminates
// (episodes are truncated by the caller, as gymnasium's TimeLimit does at 200 steps).
class Pendulum {
 public:
  static constexpr double kMaxSpeed = 8.0, kMaxTorque = 2.0, kDt = 0.05, kG = 10.0, kM = 1.0, kL = 1.0;

  // Uniform theta in [-pi, pi], theta_dot in [-1, 1], drawn from Philox (reproducible anywhere).
  void reset(uint64_t seed, uint64_t episode) {
    const double u0 =
        mbpo_fast::u32_to_unit(mbpo_fast::random_u32(seed, mbpo_fast::kStreamUser, 2 * episode));
    const double u1 =
        mbpo_fast::u32_to_unit(mbpo_fast::random_u32(seed, mbpo_fast::kStreamUser, 2 * episode + 1));
    th_ = kPi * (2.0 * u0 - 1.0);
    thdot_ = 2.0 * u1 - 1.0;
  }

  void observe(float* obs) const {
    obs[0] = static_cast<float>(std::cos(th_));
    obs[1] = static_cast<float>(std::sin(th_));
    obs[2] = static_cast<float>(thdot_);
  }

  // Advances one step with torque u; returns the reward of the step.
  double step(double u) {
    u = std::clamp(u, -kMaxTorque, kMaxTorque);
    const double angle = std::remainder(th_, 2.0 * kPi);  // angle_normalize: into [-pi, pi]
    const double cost = angle * angle + 0.1 * thdot_ * thdot_ + 0.001 * u * u;
    double next_thdot = thdot_ + (3.0 * kG / (2.0 * kL) * std::sin(th_) + 3.0 / (kM * kL * kL) * u) * kDt;
    next_thdot = std::clamp(next_thdot, -kMaxSpeed, kMaxSpeed);
    th_ += next_thdot * kDt;
    thdot_ = next_thdot;
    return -cost;
  }

 private:
  double th_ = 0.0, thdot_ = 0.0;
};

}  // namespace example
