"""karl_cli.scoring.oracle (the one oracle: smallest budget meeting ε) and karl_cli.scoring.methods
(the one table of which model supports which method)."""
from __future__ import annotations

import pytest
import torch

from karl_cli import KARL, preset
from karl_cli.errors import UsageError
from karl_cli.models.alit import ALIT
from karl_cli.scoring.methods import METHODS, check_method, default_method, method_name, methods_for
from karl_cli.scoring.oracle import (budget_l1, budget_reconstructions, meets, oracle_budgets, search,
                                     smallest_budget, sweep)

from conftest import as_if_trained


@pytest.fixture
def alit() -> ALIT:
    torch.manual_seed(0)
    return as_if_trained(ALIT(preset("tiny", arch="alit"))).eval()


def test_smallest_budget_on_known_errors():
    l1 = torch.tensor([[0.5, 0.15, 0.1], [0.5, 0.4, 0.3], [0.05, 0.04, 0.01]])
    kc, met = smallest_budget(l1, [4, 8, 12], [0.2, 0.45])
    assert kc.tolist() == [[8, 8], [12, 8], [4, 4]]
    assert met.tolist() == [[True, True], [False, True], [True, True]]


def test_meets_compares_with_eps_itself_not_its_float32_rounding():
    # float32(0.05) is just above 0.05: an L1 of exactly that float32 value does not meet ε = 0.05.
    above = torch.tensor([0.05], dtype=torch.float32)
    assert float(above) > 0.05 and not bool(meets(above, 0.05))
    below = torch.tensor([0.03], dtype=torch.float32)       # float32(0.03) is just below 0.03
    assert float(below) < 0.03 and bool(meets(below, 0.03))


def test_oracle_budgets_equal_the_prefix_and_search_sweeps(tiny_model):
    x = torch.rand(5, 3, 32, 32)
    x[0] = 0.5
    eps = [0.02, 0.1, 0.3]
    with torch.inference_mode():
        batch = oracle_budgets(tiny_model, x, eps)
        for method in ("prefix", "search"):
            assert torch.equal(batch, sweep(tiny_model, x, eps, method).kc)


def test_budget_reconstructions_are_the_searched_ones(tiny_model, alit):
    x = torch.rand(3, 3, 32, 32)
    for model in (tiny_model, alit):
        with torch.inference_mode():
            l1 = budget_l1(model, x)
            found = search(model, x, 1e-6)                     # never met: every budget is tried
            picked = dict(budget_reconstructions(model, x, [model.config.budgets[-1]]))
        assert l1.shape == (3, len(model.config.budgets))
        assert torch.allclose(l1[:, -1], found.l1, atol=1e-6)
        assert torch.allclose(picked[model.config.budgets[-1]], found.recon, atol=1e-6)
    with pytest.raises(ValueError, match="not among the model's budgets"):
        next(budget_reconstructions(tiny_model, x, [3]))


def test_the_method_table(tiny_model, alit):
    assert methods_for(tiny_model) == METHODS and methods_for(alit) == ("search",)
    assert default_method(tiny_model) == "single" and default_method(alit) == "search"
    assert check_method(alit, None) == "search" and check_method(tiny_model, "prefix") == "prefix"
    for method in ("single", "prefix"):
        with pytest.raises(UsageError, match="no halting head"):
            check_method(alit, method)
    with pytest.raises(UsageError, match="unknown method 'guess'; choose one of: single, search, prefix"):
        method_name("guess")
    assert isinstance(tiny_model, KARL)
