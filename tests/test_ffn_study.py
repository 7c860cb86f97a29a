"""The FFN study's checks, its attention-sink detector, and its transfer controls."""

import pytest
import torch

from interp.capitals import load_capitals, mark_tokens
from interp.cli import main
from interp.errors import UserValueError
from interp.ffn import Condition, evaluate, transfer
from interp.ffn_clean import CleanRun
from interp.ffn_sinks import first_and_other_norms, massive_activations
from interp.ffn_study import FfnConfig, run_study
from interp.ffn_transfer import specificity


@pytest.fixture(scope="module")
def items(tiny):
    return mark_tokens(tiny, load_capitals())


def _prompts(model, items, n=6):
    from interp.capitals import build_prompts
    return build_prompts(model, items[:n])


def test_massive_activation_found_where_injected(tiny, items):
    prompts = _prompts(tiny, items)

    def huge(act, hook):
        act = act.clone()
        act[:, 0] = 1000.0  # norm 8000 at position 0 vs O(1) elsewhere
        return act

    with tiny.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", huge)]):
        clean = CleanRun(tiny, prompts.tokens, prompts.lengths, 4, keep_mlp=True)
    report = massive_activations(clean)
    assert report["massive_layers"] == [1]
    assert report["mlp_out_norm_first_position"][1] == pytest.approx(1000.0 * 64 ** 0.5, rel=1e-4)


def test_no_massive_activation_in_a_plain_model(tiny, items):
    prompts = _prompts(tiny, items)
    clean = CleanRun(tiny, prompts.tokens, prompts.lengths, 4, keep_mlp=True)
    report = massive_activations(clean)
    assert report["massive_layers"] == []
    assert all(r < 100 for r in report["ratio"])


def test_norms_skip_padding_and_the_first_position():
    mlp = torch.zeros(1, 2, 4, 3)
    mlp[0, :, 0, 0] = 50.0  # position 0
    mlp[0, 0, 1:3, 0] = 2.0  # real positions of prompt 0 (length 3)
    mlp[0, 1, 1, 0] = 4.0  # real position of prompt 1 (length 2)
    mlp[0, :, 3, 0] = 99.0  # padding
    first, others = first_and_other_norms(mlp, torch.tensor([3, 2]))
    assert first.tolist() == [[50.0, 50.0]]
    assert sorted(others[0].tolist()) == [2.0, 2.0, 4.0]


def test_specificity_equals_one_pair_at_a_time(tiny, items):
    config = FfnConfig(n_specificity=3, batch_size=2)
    spec = specificity(tiny, items, config, layer=0)
    from interp.capitals import build_prompts, find
    subset = [find(items, c) for c in spec["countries"]]
    demo = find(items, config.demo)
    p = build_prompts(tiny, subset, demos=[demo] * 3)
    clean = CleanRun(tiny, p.tokens, p.lengths, 3)
    vecs = clean.mlp_read(0)
    hit_t = hit_s = 0
    for s in range(3):
        res = evaluate(tiny, p, [Condition("v", transfer(0, vecs[s], "add", 2))])["v"]
        for t in range(3):
            if s != t:
                hit_t += int(res.top1[t] == p.capital_ids[t])
                hit_s += int(res.top1[t] == p.capital_ids[s])
    assert spec["n_pairs"] == 6
    assert spec["target_capital_rate"] == pytest.approx(hit_t / 6)
    assert spec["source_capital_rate"] == pytest.approx(hit_s / 6)


def test_study_summary_has_both_modes_controls_and_work(tiny):
    config = FfnConfig(n_prompts=4, n_control_sources=2, n_specificity=3, batch_size=4)
    s = run_study(tiny, config)
    assert set(s["single_layer"]) == {"all", "no-first"}
    assert set(s["massive_activations"]) == {"abstractive", "extractive"}
    add = s["transfer"]["add"]
    assert {"nothing", "o_vector", "random", "mean_output"} <= set(add)
    assert len(s["transfer"]["control_sources"]) == 2
    assert all(c in add for c in s["transfer"]["control_sources"])
    assert s["config"]["n_prompts"] == 4
    assert s["work_fpe"]["selection"]["real_tokens_only"] == 1.0


@pytest.mark.parametrize("change, flag", [({"n_prompts": 0}, "--n-prompts"),
                                          ({"batch_size": 0}, "--batch-size"),
                                          ({"country": "Polandd"}, "did you mean 'Poland'"),
                                          ({"demo": "Poland"}, "--demo")])
def test_config_check_names_the_flag(change, flag):
    with pytest.raises(UserValueError, match=flag):
        FfnConfig(**change).check()


@pytest.mark.parametrize("argv, flag", [
    (["ffn-ablation", "--n-prompts", "0"], "--n-prompts"),
    (["ffn-ablation", "--country", "Polandd"], "--country"),
    (["capitals", "--batch-size", "0"], "--batch-size"),
    (["capitals", "--n-prompts", "1"], "--n-prompts"),
    (["analogies", "--k", "0"], "--k"),
])
def test_bad_counts_fail_before_the_model_loads(argv, flag, monkeypatch, capsys, tmp_path):
    import interp.models

    def no_load(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(interp.models, "load_model", no_load)
    code = main([*argv, "--model", "random:tiny", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and flag in err and len(err.strip().splitlines()) == 1
