"""Heun (Algorithm 2): second order against the exact probability-flow ODE of Gaussian data,
2N - 1 evaluations. Its agreement with the float64 Algorithm 2 is in test_sampler_correctness."""

import numpy as np
from sampler_utils import ode_errors

import karras_jax as kj


def test_heun_is_second_order():
    errors = ode_errors("heun")
    ratios = errors[:-1] / errors[1:]
    assert np.all(ratios > 3.0), (errors, ratios)  # about 4x per doubling of N
    assert 1e-4 < errors[-1] < 0.02, errors  # converged, and still above float32 round-off


def test_heun_costs_two_evaluations_per_step_but_one_for_the_last():
    solver = kj.heun()
    assert (solver.name, solver.order, solver.evaluations(1), solver.evaluations(18)) == ("heun", 2, 1, 35)
