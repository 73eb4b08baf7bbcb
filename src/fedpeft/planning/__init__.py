"""FedsLLM resource planning: pick the cut layer, the LoRA rank and each client's bandwidth and power to minimize the
modeled total training delay (ALGORITHMS.md §5, docs/planner.md). Pure numpy/scipy: nothing here imports torch.

- model: :mod:`fedpeft.planning.delay` (rates, FLOPs, bits, round time, energy), :mod:`fedpeft.planning.rounds`
- scenario: :class:`Scenario`, :func:`load_scenario`, :class:`InfeasibleScenarioError`
- solver: :func:`plan`, :func:`baseline_equal`, :func:`baseline_random`, :func:`brute_force`, :class:`Plan`,
  :func:`save_plan`, :func:`load_plan`
"""

from fedpeft.planning.allocate import (
    Plan,
    baseline_equal,
    baseline_random,
    brute_force,
    build_problem,
    check_feasible,
    evaluate,
    load_plan,
    plan,
    save_plan,
)
from fedpeft.planning.rounds import RoundsModel, fit_rounds
from fedpeft.planning.scenario import InfeasibleScenarioError, Scenario, load_scenario, scenario_from_dict

__all__ = [
    "InfeasibleScenarioError",
    "Plan",
    "RoundsModel",
    "Scenario",
    "baseline_equal",
    "baseline_random",
    "brute_force",
    "build_problem",
    "check_feasible",
    "evaluate",
    "fit_rounds",
    "load_plan",
    "load_scenario",
    "plan",
    "save_plan",
    "scenario_from_dict",
]
