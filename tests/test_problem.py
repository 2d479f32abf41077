"""pinnlsr.problem: terms, point sampling (seeded, counts, dtype) and the references a problem gives."""
import pytest
import torch

from pinnlsr.problem import PDEProblem, Term

from oracles import TinyPoisson


def test_points_are_seeded_counted_and_typed():
    problem = TinyPoisson(n_pde=7, n_bc=5)
    a = problem.sample_points(torch.Generator().manual_seed(0))
    b = problem.sample_points(torch.Generator().manual_seed(0))
    c = problem.sample_points(torch.Generator().manual_seed(1))
    assert {k: tuple(v.shape) for k, v in a.items()} == {"pde": (7, 2), "bc": (5, 2)}
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["pde"], c["pde"])
    more = problem.sample_points(torch.Generator().manual_seed(0), torch.float32, counts={"pde": 11})
    assert more["pde"].shape == (11, 2) and more["pde"].dtype == torch.float32
    with pytest.raises(ValueError, match="unknown terms"):
        problem.sample_points(torch.Generator(), counts={"interior": 3})


class Fixed(PDEProblem):
    name = "fixed"
    input_names = ("x", "y")

    def __init__(self, terms):
        self._terms = terms

    def terms(self):
        return self._terms


def test_terms_check_their_points():
    def residual(u, x):
        return u(x)

    good = torch.rand(3, 2, dtype=torch.float64)
    assert torch.equal(Fixed([Term("data", residual, good)]).sample_points(torch.Generator())["data"], good)
    cases = [
        ([Term("a", residual, good), Term("a", residual, good)], ValueError, "unique"),
        ([Term("a", residual, torch.zeros(0, 2))], ValueError, "non-empty"),
        ([Term("a", residual, torch.tensor([[0.0, float("nan")]]))], ValueError, "NaN"),
        ([Term("a", residual, torch.rand(3, 3))], ValueError, "3 columns"),
        ([Term("a", residual, lambda n, generator=None: torch.rand(n, 2), n_points=0)], ValueError, "empty point set"),
        ([Term("a", residual, lambda n: torch.rand(n, 2), n_points=4)], TypeError, "generator"),
    ]
    for terms, error, message in cases:
        with pytest.raises(error, match=message):
            Fixed(terms).sample_points(torch.Generator())
    with pytest.raises(ValueError, match="targets need fixed points"):
        Term("a", residual, lambda n, generator=None: torch.rand(n, 2), 3, targets=torch.zeros(3, 1))


def test_reference_from_the_exact_solution_and_its_absence():
    problem = TinyPoisson()
    x, u = problem.reference()
    torch.testing.assert_close(u, problem.exact(x))
    assert Fixed([]).reference() is None
    assert problem.dim == 2 and problem.n_outputs == 1
    model = problem.default_model(torch.Generator().manual_seed(0))
    assert model(x[:3]).shape == (3, 1)
