"""mimfast.analysis on hand-made trajectories with known answers, and on real runs."""

import re
from fractions import Fraction
from math import comb

import numpy as np
import pytest

import mimfast as mf
from mimfast import analysis as A

STEPS = np.array([0, 10, 20, 30])


def paper(P=100, kappa_c=0.9):
    return mf.Setting.paper(P, kappa_c, 0.3)  # P = 100: global 1 x 64, local 9 x 4


def known_result(setting, own_grad, global_grad, attention_own, fp_global, pp=None,
                 patch_loss=0.3):
    """A Result whose local class (k=0, h=1) has the given trajectories.

    The global class (h=0) leads with its own feature from the start and has converged.
    Columns: own, group 0, group 1.
    """
    n = len(STEPS)
    fp = np.zeros((n, 2, 3))
    grad = np.zeros((n, 2, 3))
    att = np.zeros((n, 2, 3))
    fp[:, 1, 1] = fp_global
    fp[:, 0, 0] = np.linspace(0, 5, n)
    fp[:, 1, 0] = [0.0, 0.2, 0.4, 5.0]  # barely moved until the switch at step 20
    grad[:, 1, 0], grad[:, 1, 1], grad[:, 1, 2] = own_grad, global_grad, 1e-3
    grad[:, 0, 0], grad[:, 0, 2] = -1.0, 0.5
    att[:, 1, 0] = attention_own
    att[:, 0, 0] = 0.99
    loss = np.full((n, 2), patch_loss)
    state = mf.State.zeros(setting)
    pp_traj = None
    if setting.pp == "exact":
        pp_traj = np.zeros((n, 2, 4)) if pp is None else pp
    return mf.Result(setting, "cpp", 0.01, STEPS, np.linspace(3, 1, n), [fp], [grad], [att],
                     [loss], pp_traj, state, 0.0, record_every=10)


TWO_PHASES = {"own_grad": [-1.0, -2.0, -5.0, -6.0], "global_grad": [4.0, 3.0, 4.0, 1.0],
              "attention_own": [0.01, 0.5, 0.96, 0.999], "fp_global": [0.0, -2.0, -3.0, -2.5]}


def test_phase_switch_is_first_recorded_step_where_own_gradient_leads():
    r = known_result(paper(), **TWO_PHASES)
    assert A.phase_switch(r, 0, 1) == 20  # |-5| >= 4 first at step 20 (|-2| < 3 before)
    assert A.phase_switch(r, 0, 0) == 0  # the global query leads from the start
    r = known_result(paper(), **{**TWO_PHASES, "own_grad": [-9.0, -9.0, -9.0, -9.0]})
    assert A.phase_switch(r, 0, 1) == 0
    r = known_result(paper(), **{**TWO_PHASES, "own_grad": [-1.0, -1.0, -1.0, -0.5]})
    assert A.phase_switch(r, 0, 1) is None
    # equality counts as leading; the other local areas' gradient is a rival too
    r = known_result(paper(), **{**TWO_PHASES, "own_grad": [4.0, 1e-4, 1e-4, 1e-4]})
    assert A.phase_switch(r, 0, 1) == 0
    r = known_result(paper(), **{**TWO_PHASES, "global_grad": [0.0] * 4,
                                 "own_grad": [1e-4, 1e-2, 1e-2, 1e-2]})
    assert A.phase_switch(r, 0, 1) == 10


def test_convergence_time_and_global_minimum():
    r = known_result(paper(), **TWO_PHASES)
    assert A.convergence_time(r, 0, 1, 0.05) == 20
    assert A.convergence_time(r, 0, 1, 0.5) == 10
    assert A.convergence_time(r, 0, 1, 1e-4) is None
    assert A.global_fp_min(r, 0, 1) == (-3.0, 20)
    assert A.global_fp_min(r, 0, 0) is None  # the global query has no other global area


def test_irreducible_loss_matches_exact_hypergeometric():
    s = mf.Setting([mf.Cluster([mf.Group(1, 7, z=1.5), mf.Group(4, 3, z=0.5)])], masked=11)
    P, u = s.P, s.unmasked
    for h, (c, z) in enumerate([(7, 1.5), (3, 0.5)]):
        exact = 0.5 * z**2 * comb(P - c, u) / comb(P - 1, u)
        assert A.irreducible_loss(s, 0, h) == pytest.approx(exact, rel=1e-13)
    # the own area has no other position: always "entirely masked"
    s1 = mf.Setting([mf.Cluster([mf.Group(1, 3), mf.Group(2, 1)])], masked=2)
    assert A.irreducible_loss(s1, 0, 1) == pytest.approx(0.5, rel=1e-15)


def test_irreducible_loss_is_accurate_at_a_billion_patches():
    s = mf.Setting.paper(10**9, 0.9, 0.3)
    P, u = s.P, s.unmasked
    for h in (0, 1):
        c = s.clusters[0].groups[h].size
        # Pr(U_own = 0) = prod_{i < c-1} (P-1-u-i) / (P-1-i), exactly in rationals (local) or
        # through its logarithm (the huge global area underflows to 0 anyway)
        if c < 1000:
            pr = Fraction(1)
            for i in range(c - 1):
                pr *= Fraction(P - 1 - u - i, P - 1 - i)
            assert A.irreducible_loss(s, 0, h) == pytest.approx(float(pr) / 2, rel=1e-12)
        else:
            assert A.irreducible_loss(s, 0, h) == 0.0


def test_loss_gap_subtracts_the_irreducible_part():
    s = paper()
    r = known_result(s, **TWO_PHASES)
    np.testing.assert_allclose(A.loss_gap(r, 0, 1), 0.3 - A.irreducible_loss(s, 0, 1))
    assert A.irreducible_loss(s, 0, 1) == pytest.approx(0.5 * comb(96, 50) / comb(99, 50))


def test_analyze_says_which_claims_hold():
    s = paper()  # Delta = 0.5 > 0: two phases predicted for the local areas
    r = known_result(s, **TWO_PHASES, patch_loss=1e-3)
    a = A.analyze(r, epsilon=0.05)
    claims = {c.name: c.holds for c in a.claims}
    assert claims == {"loss_gap": True, "attention": True, "local_phases": True,
                      "global_phases": True, "pp_small": True}
    local = a.classes[1]
    assert (local.name, local.phase_switch, local.phases, local.convergence_time) == \
        ("local", 20, 2, 20)
    assert (local.global_fp_min, local.global_fp_min_step) == (-3.0, 20)
    assert a.holds
    text = a.table()
    for word in ("global", "local", "Delta = +0.5000", "holds", "-3.0000 @ 20"):
        assert word in text

    # one phase although Delta > 0, attention short of 1 - eps, loss gap too large, big PP
    pp = np.zeros((len(STEPS), 2, 4))
    pp[-1, 1, 1] = 4.0
    r = known_result(s, **{**TWO_PHASES, "own_grad": [-9.0] * 4,
                           "attention_own": [0.1, 0.2, 0.3, 0.4]}, pp=pp, patch_loss=0.2)
    a = A.analyze(r, epsilon=0.05)
    claims = {c.name: c.holds for c in a.claims}
    assert claims == {"loss_gap": False, "attention": False, "local_phases": False,
                      "global_phases": True, "pp_small": False}
    assert not a.holds and "FAILS" in a.table()


def test_analyze_outside_the_paper_shape_marks_phase_claims_not_applicable():
    s = mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2)]),
                    mf.Cluster([mf.Group(2, 3), mf.Group(2, 2)])], gamma=0.5)
    r = mf.simulate(s, 3.0, 20, threads=1)
    a = A.analyze(r)
    claims = {c.name: c for c in a.claims}
    assert claims["local_phases"].holds is None and claims["global_phases"].holds is None
    assert claims["pp_small"].holds is None  # frozen: not tested
    assert claims["pp_small"].detail == "PP frozen: the PP claim was not tested"
    assert [c.name for c in a.classes] == ["k0 group 0", "k0 group 1", "k1 group 0", "k1 group 1"]
    assert a.delta is None and "n/a" in a.table()
    with pytest.raises(ValueError, match="epsilon"):
        A.analyze(r, epsilon=1.5)


@pytest.mark.parametrize("kappa_c, phases", [(0.9, 2), (0.6, 1)])
def test_the_paper_regimes_at_small_P(kappa_c, phases):
    s = mf.Setting.paper(10**4, kappa_c, 0.3)
    r = mf.simulate(s, 20.0, 300, record_every=2, threads=1)
    a = A.analyze(r)
    assert a.holds, a.table()
    glob, local = a.classes
    assert glob.phases == 1 and local.phases == phases
    # for the local query the largest rival gradient is the global-decoupling one (docs/model.md §5)
    own, glob_grad = np.abs(r.fp_grad(0, 1, "own")), np.abs(r.fp_grad(0, 1, 0))
    assert local.phase_switch == r.steps[np.argmax(own >= glob_grad)]
    assert local.phase_switch % 2 == 0  # a recorded step
    if phases == 2:
        assert 0 < local.phase_switch < local.convergence_time


def test_evolution_table_lists_events_and_values():
    import mimfast as mf
    from mimfast.analysis import convergence_time, evolution, phase_switch

    r = mf.simulate(mf.Setting.paper(10**4, 0.9, 0.3), eta=20.0, steps=200, threads=1)
    text = evolution(r)
    lines = text.splitlines()
    assert lines[1].split()[:2] == ["step", "global"] and lines[1].split()[-1] == "L"
    rows = [line for line in lines[2:] if line.split()[0].isdigit()]
    steps = [int(line.split()[0]) for line in rows]
    assert steps[0] == 0 and steps[-1] == 200 and steps == sorted(steps)
    switch, t_eps = phase_switch(r, 0, 1), convergence_time(r, 0, 1)
    assert switch in steps and t_eps in steps
    # the event rows are marked, and only they
    marks = {int(line.split()[0]): " ".join(line.split()[7:]) for line in rows}
    assert "local switch" in marks[switch] and "local T_eps" in marks[t_eps]
    # a switch at step 0 is one phase: not marked
    assert phase_switch(r, 0, 0) == 0 and "switch" not in marks[0]
    events = {switch, t_eps, convergence_time(r, 0, 0)}
    assert all(bool(m) == (t in events) for t, m in marks.items())
    last = rows[-1].split()
    assert float(last[3]) == pytest.approx(r.fp(0, 1, "own")[-1], rel=1e-4)
    assert float(last[5]) == pytest.approx(r.attention(0, 1, "own")[-1], rel=1e-4)
    assert float(last[6]) == pytest.approx(r.loss[-1], rel=1e-4)
    # the L column is said to be the total over the masked patches
    assert "summed over the m = 5,000 masked patches" in text


def test_report_says_still_falling_and_not_converged():
    import mimfast as mf
    from mimfast.analysis import analyze

    s = mf.Setting.paper(10**4, 0.9, 0.3)
    # 30 steps: the global FP still falls, attention has not converged, no local switch yet
    a = analyze(mf.simulate(s, eta=20.0, steps=30, threads=1))
    table = a.table()
    assert "@ 30 (still falling)" in table
    claims = {c.name: c for c in a.claims}
    for name in ("attention", "loss_gap", "local_phases"):
        assert claims[name].holds is False
        assert claims[name].detail.endswith("not converged: raise --steps"), name
    # converged: no such note
    a = analyze(mf.simulate(s, eta=20.0, steps=300, threads=1))
    assert "raise --steps" not in a.table()
    # no step at all: no inf, no "step never"
    text = analyze(mf.simulate(s, eta=20.0, steps=0, threads=1)).table()
    assert not re.search(r"\binf\b", text) and "never" not in text and "raise --steps" in text


def test_events_are_reported_with_step_and_flow_time():
    r = known_result(paper(), **TWO_PHASES)  # eta = 0.01
    local = A.analyze(r).classes[1]
    assert (local.phase_switch, local.switch_tau) == (20, pytest.approx(0.2))
    assert (local.convergence_time, local.convergence_tau) == (20, pytest.approx(0.2))
    assert (local.fp_global_at_switch, local.fp_own_at_switch, local.decoupled) == \
        (-3.0, 0.4, True)
    assert local.grad_ratio0 == 4.0
    assert "20 (tau 0.2)" in A.analyze(r).table()


def test_a_switch_without_decoupling_is_one_phase():
    r = known_result(paper(), **{**TWO_PHASES, "fp_global": [0.0, -0.1, -0.2, -0.3]})
    a = A.analyze(r)
    local = a.classes[1]
    assert local.phase_switch == 20 and local.decoupled is False and local.phases == 1
    claim = {c.name: c for c in a.claims}["local_phases"]
    assert claim.holds is False and "(no decoupling)" in claim.detail


def test_claims_name_their_source():
    a = A.analyze(known_result(paper(), **TWO_PHASES))
    sources = {c.name: c.source for c in a.claims}
    assert sources["loss_gap"] == sources["attention"] == "Theorem 4.1"
    assert sources["local_phases"] == sources["global_phases"] == sources["pp_small"] \
        == "§5 / Lemma 5.3 / App. F"
    assert "] Theorem 4.1: loss gap" in a.table() and "] §5 / Lemma 5.3" in a.table()


def test_gd_whose_first_step_crosses_phase_one_is_untrusted():
    """The P = 10^15 preset's eta: step 0 moves the local query's global FP by ~2.5e4."""
    from mimfast.cli import preset_eta

    s = mf.Setting.paper(10**15, 0.9, 0.3)
    a = A.analyze(mf.simulate(s, preset_eta(10**15, 0.3), 5, threads=1))
    claims = {c.name: c for c in a.claims}
    for name in ("local_phases", "global_phases"):
        assert claims[name].mark == "untrusted" and not claims[name].trusted
    assert claims["loss_gap"].trusted
    assert "GD steps too large to follow the gradient flow" in a.table()
    assert "[untrusted]" in a.table() and a.classes[1].step_move > 1e4


def test_oversized_step_after_the_switch_is_flagged_but_phases_stay_trusted():
    """paper-negative at P = 10^15 and its preset eta: step 0 takes the global class's A_own
    from 0 to 49.9 (its switch is at 0, so the phase verdict rests on no step)."""
    from mimfast.cli import preset_eta

    s = mf.Setting.paper(10**15, 0.6, 0.3)
    assert s.delta < 0
    r = mf.simulate(s, preset_eta(10**15, 0.3), 3, threads=1)
    a = A.analyze(r)
    glob = a.classes[0]
    assert glob.switch_tau == 0 and glob.step_move == 0
    assert glob.run_move == pytest.approx(r.fp(0, 0, "own")[1]) and glob.run_move > 40
    assert glob.run_move_step == 0
    assert "step 0 moves a correlation of the global class\nby 49.9" in a.warning
    assert "event times (switch, T_eps, global minimum)\nare those of GD" in a.warning
    assert a.trusted and all(c.trusted for c in a.claims) and "untrusted" not in a.table()
    assert "GD steps too large" in a.table()


def test_step_moves_between_records_are_means_per_step():
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    every = A.step_moves(mf.simulate(s, 2e4, 12, threads=1), 0, 1)
    sparse = mf.simulate(s, 2e4, 12, record_every=3, threads=1)
    moves = A.step_moves(sparse, 0, 1)
    assert len(moves) == 5 and moves[0] == every[0]  # step 0 itself: eta |dL/dA|, exact
    for i in range(1, 4):  # between records: at most the largest single step, at least a mean
        assert moves[i] <= every[3 * i:3 * i + 3].max() * (1 + 1e-9)
        assert moves[i] >= every[3 * i:3 * i + 3].min() * (1 - 1e-9)
    big = A.analyze(sparse, max_move=moves.max() / 2).warning
    assert "a mean per step over the 3 steps between records" in big


def test_flow_at_a_quadrillion_patches_shows_two_phases():
    s = mf.Setting.paper(10**15, 0.9, 0.3)
    a = A.analyze(mf.flow(s, 1e30, stop_at="switch", threads=1))
    glob, local = a.classes
    claims = {c.name: c for c in a.claims}
    assert claims["local_phases"].holds and claims["local_phases"].trusted
    assert claims["global_phases"].holds and glob.switch_tau == 0
    assert local.phases == 2 and local.decoupled and local.grad_ratio0 > 1e6
    # Lemma 5.3: at the switch the global FP has decoupled while the own one barely moved
    assert local.fp_global_at_switch < -5 and 0 < local.fp_own_at_switch < 1
    assert 1e10 < local.switch_tau < 1e11
    assert "tau 4.15e+10" in a.table() and "untrusted" not in a.table()


def test_delta_below_the_finite_p_boundary_is_not_judged():
    s = mf.Setting.paper(10**4, 0.66, 0.3)  # Delta = 0.02 < Delta_c = ln 2 / ln 10^4 = 0.075
    assert 0 < s.delta < A.delta_boundary(s)
    claim = {c.name: c for c in A.analyze(mf.flow(s, 1e30, stop_at="T_eps")).claims}
    assert claim["local_phases"].holds is None
    assert claim["local_phases"].detail.startswith("n/a (Delta too close to 0 at this P")


def test_attention_at_its_ceiling_does_not_ask_for_more_steps():
    s = mf.Setting.paper(100, 0.9, 0.1)  # local areas of 2 patches: Pr(U_own = 0) ~ 1/2
    ceiling = A.attention_ceiling(s, 0, 1)
    assert ceiling < 0.6
    a = A.analyze(mf.flow(s, 1e5))
    claim = {c.name: c for c in a.claims}["attention"]
    assert claim.holds is False and "raise" not in claim.detail
    assert f"ceiling 1 - Pr(U_own = 0) is {ceiling:.6f}" in claim.detail


def test_frozen_pp_is_not_tested():
    s = mf.Setting.paper(100, 0.9, 0.3, K=2)
    assert s.pp == "frozen"
    claim = {c.name: c for c in A.analyze(mf.flow(s, 10.0)).claims}["pp_small"]
    assert claim.holds is None and claim.detail == "PP frozen: the PP claim was not tested"
