"""The minimum forward-equivalents of the IOI stages (`interp.ioi.costs`)."""

import pytest

from interp.ioi.costs import path_step_floor
from interp.ioi.dataset import build_ioi
from interp.nodes import Head
from interp.patching import Receiver, prepare_runs
from interp.patching.counter import counting, forward_equivalents
from interp.patching.gradients import clean_gradients
from interp.patching.path import ScreenedPaths

RECEIVERS = [Receiver(Head(1, 2), "v", "S2"), Receiver(Head(1, 0), "q", "END")]
SENDERS = [Head(0, h) for h in range(4)] + [Head(1, 1)]  # L1H1 reaches no receiver


@pytest.fixture(scope="module")
def runs(tiny):
    runs = prepare_runs(tiny, build_ioi(tiny, n_prompts=8, seed=0).batch)
    clean_gradients(tiny, runs)  # the shared backward pass: not the step's
    return runs


def _counted(tiny, runs, work) -> float:
    with counting() as count:
        before = count.tokens
        work()
        tokens = count.tokens - before
    return forward_equivalents(tokens, tiny.cfg.n_layers, runs.batch.clean_tokens.numel())


def test_the_screen_estimate_floor_is_what_the_engine_runs(tiny, runs):
    """The estimate needs each sender's input at each receiver: the engine's propagation
    is exactly that much; a sender that reaches no receiver needs nothing."""
    counted = _counted(tiny, runs, lambda: ScreenedPaths(tiny, runs, SENDERS, RECEIVERS,
                                                         progress=False))
    step = {"receivers": RECEIVERS, "propagated": SENDERS, "exact": []}
    assert counted > 0
    assert path_step_floor(tiny.cfg, runs.batch, step) == pytest.approx(counted)
    unreachable = {"receivers": RECEIVERS, "propagated": [Head(1, 1)], "exact": [Head(1, 1)]}
    assert path_step_floor(tiny.cfg, runs.batch, unreachable) == 0


def test_the_exact_floor_is_a_lower_bound_of_the_final_runs(tiny, runs):
    """The final runs compute the tokens from the first receiver position (S2 here) to the
    read; the floor needs only the read in the last layer, so it is below them but above
    the read-only count."""
    paths = ScreenedPaths(tiny, runs, SENDERS, RECEIVERS, progress=False)
    counted = _counted(tiny, runs, lambda: paths.exact([0, 2]))
    floor = path_step_floor(tiny.cfg, runs.batch, {"receivers": RECEIVERS,
                                                   "propagated": [], "exact": SENDERS[:3:2]})
    read_only = 2 * len(runs.batch) / (tiny.cfg.n_layers * runs.batch.clean_tokens.numel())
    assert read_only <= floor <= counted


def test_the_evaluation_floor_is_below_what_the_evaluation_counts(tiny, runs):
    """circuit_evaluation's minimum (C, F(0), M \\ K, C \\ K, the unclassified circuit and
    the single knock-outs) never exceeds what the stage's runs count."""
    from types import SimpleNamespace

    from interp.circuit import completeness, faithfulness, minimality
    from interp.ioi.classify import CLASS_POSITIONS
    from interp.ioi.costs import _evaluation
    from interp.mean_ablation import MeanAblation
    from interp.nodes import parse_node

    classes = {c: [] for c in CLASS_POSITIONS} | {"name_movers": ["L1H0"],
                                                  "induction": ["L0H1", "L1H3"]}
    ioi = SimpleNamespace(ds=SimpleNamespace(batch=runs.batch), classes=classes,
                          unclassified={"L1H1": {}})
    circuit = {parse_node(h): CLASS_POSITIONS[c] for c, hs in classes.items() for h in hs}
    groups = {c: [parse_node(h) for h in hs] for c, hs in classes.items()}

    def evaluate():
        ev = MeanAblation(tiny, runs)
        faithfulness(tiny, runs, circuit, ev)
        faithfulness(tiny, runs, {**circuit, parse_node("L1H1"): ["END"]}, ev)
        completeness(tiny, runs, circuit, groups, ev=ev)
        minimality(tiny, runs, circuit, groups, ev=ev)

    floor = _evaluation(ioi, tiny.cfg)
    assert 1.0 < floor <= _counted(tiny, runs, evaluate)  # (the group knock-outs: not counted)
