"""Euler: first order against the exact probability-flow ODE of Gaussian data, N evaluations."""

import numpy as np
from sampler_utils import ode_errors

import karras_jax as kj


def test_euler_is_first_order():
    errors = ode_errors("euler")
    ratios = errors[:-1] / errors[1:]
    assert np.all((ratios > 1.7) & (ratios < 2.3)), (errors, ratios)  # about 2x per doubling
    assert errors[-1] < 0.2, errors


def test_euler_costs_one_evaluation_per_step():
    solver = kj.euler()
    assert (solver.name, solver.order, solver.evaluations(18)) == ("euler", 1, 18)
