"""The benchmark: FLOP floors against a hand count, interp's exact sweep against
TransformerLens' own function, and the bench's rows and ratios (random:tiny, seconds)."""

import json
from types import SimpleNamespace

import pytest
import torch
from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

from interp import bench
from interp.bench import act_patch_floor, path_patch_floor, tl_act_patch_heads
from interp.cli import main
from interp.ioi.dataset import build_ioi
from interp.metrics import logits_at
from interp.patching import act_patch_heads, prepare_runs

TINY = SimpleNamespace(n_layers=2, n_heads=4, d_model=64, d_head=16, d_mlp=256, d_vocab=50257,
                       n_key_value_heads=None, gated_mlp=False)
# A Llama-like toy: grouped K/V (2 KV heads for 4 query heads) and a gated MLP.
GQA = SimpleNamespace(n_layers=3, n_heads=4, d_model=32, d_head=8, d_mlp=48, d_vocab=100,
                      n_key_value_heads=2, gated_mlp=True)


def _hand_block(cfg, n_tokens: int, start: int = 0) -> int:
    """One block, counted multiply-add by multiply-add, query by query (from `start`)."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    mlp_mats = 3 if cfg.gated_mlp else 2
    flops = 0
    for t in range(start, n_tokens):
        flops += 2 * cfg.d_model * cfg.d_head * cfg.n_heads  # W_Q
        flops += 2 * 2 * cfg.d_model * cfg.d_head * n_kv  # W_K, W_V
        flops += 2 * cfg.d_head * cfg.n_heads * cfg.d_model  # W_O
        for _head in range(cfg.n_heads):
            for _key in range(t + 1):  # causal: keys 0..t
                flops += 2 * cfg.d_head + 2 * cfg.d_head  # q.k and pattern * v
        flops += mlp_mats * 2 * cfg.d_model * cfg.d_mlp
    return flops


def _hand_last_block(cfg, n_tokens: int, start: int = 0) -> int:
    """The last block read at its last token only: K/V from `start` on, the rest at that
    token (attending to every key)."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    mlp_mats = 3 if cfg.gated_mlp else 2
    flops = 0
    for _token in range(start, n_tokens):
        flops += 2 * 2 * cfg.d_model * cfg.d_head * n_kv  # W_K, W_V
    flops += 2 * cfg.d_model * cfg.d_head * cfg.n_heads  # W_Q, read token
    flops += 2 * cfg.d_head * cfg.n_heads * cfg.d_model  # W_O, read token
    for _head in range(cfg.n_heads):
        for _key in range(n_tokens):
            flops += 2 * cfg.d_head + 2 * cfg.d_head
    return flops + mlp_mats * 2 * cfg.d_model * cfg.d_mlp


def _hand_act_floor(cfg, lengths, cols, starts=None) -> int:
    mlp = (3 if cfg.gated_mlp else 2) * 2 * cfg.d_model * cfg.d_mlp
    total = 0
    for layer in range(cfg.n_layers):
        for _head in range(cfg.n_heads):
            for n, start in zip(lengths, starts or [0] * len(lengths), strict=True):
                total += 2 * cfg.d_model * cols  # unembed, read position only
                if layer == cfg.n_layers - 1:  # delta @ W_O and MLP at the read token
                    total += 2 * cfg.d_head * cfg.d_model + mlp
                    continue
                for _token in range(start, n):  # delta @ W_O, MLP L
                    total += 2 * cfg.d_head * cfg.d_model + mlp
                for _later in range(layer + 1, cfg.n_layers - 1):
                    total += _hand_block(cfg, n, start)
                total += _hand_last_block(cfg, n, start)
    return total


def _hand_path_floor(cfg, n_prompts, cols) -> int:
    mlp = (3 if cfg.gated_mlp else 2) * 2 * cfg.d_model * cfg.d_mlp
    total = 0
    for layer in range(cfg.n_layers):
        for _head in range(cfg.n_heads):
            for _prompt in range(n_prompts):  # read position only
                total += 2 * cfg.d_head * cfg.d_model + 2 * cfg.d_model * cols
                total += sum(mlp for _ in range(layer, cfg.n_layers))
    return total


@pytest.mark.parametrize("cfg", [TINY, GQA], ids=["gpt2-tiny", "gqa-gated"])
def test_flop_floors_match_hand_count(cfg):
    lengths = [3, 5, 1]
    assert act_patch_floor(cfg, lengths) == _hand_act_floor(cfg, lengths, cfg.d_vocab)
    assert path_patch_floor(cfg, 3) == _hand_path_floor(cfg, 3, cfg.d_vocab)
    # a logit difference reads two columns of W_U
    assert act_patch_floor(cfg, lengths, 2) == _hand_act_floor(cfg, lengths, 2)
    assert path_patch_floor(cfg, 3, 2) == _hand_path_floor(cfg, 3, 2)
    # tokens before the first that differs are cached: the floor starts there
    starts = [1, 3, 0]
    assert act_patch_floor(cfg, lengths, 2, starts) == _hand_act_floor(cfg, lengths, 2, starts)
    assert act_patch_floor(cfg, lengths, 2, starts) < act_patch_floor(cfg, lengths, 2)


def test_flop_floor_tiny_numbers():
    """One number worked out on paper: the tiny config (2 layers), one prompt of 2 tokens.
    Layer-1 heads: output change + MLP + unembed at the read token. Layer-0 heads: output
    change and MLP on both tokens, then the last block (K/V of 2 tokens, the rest at one)."""
    c = TINY
    mlp, unembed, head_out = 4 * 64 * 256, 2 * 64 * 50257, 2 * 16 * 64
    proj = 2 * 64 * 64  # one d_model x d_model projection
    last_block = 2 * 2 * proj + 2 * proj + 4 * 4 * 16 * 2 + mlp
    layer1 = 4 * (head_out + mlp + unembed)
    layer0 = 4 * (2 * (head_out + mlp) + unembed + last_block)
    assert act_patch_floor(c, [2]) == layer0 + layer1


@pytest.fixture(scope="module")
def tiny_ioi(tiny):
    return tiny, build_ioi(tiny, 8, seed=0).batch


def test_interp_denoise_equals_transformer_lens(tiny_ioi):
    model, batch = tiny_ioi
    runs = prepare_runs(model, batch)
    ours = act_patch_heads(model, runs, direction="denoise", progress=False)

    def mean_metric(logits):  # TransformerLens' default: a scalar metric of the logits
        return batch.metric(logits_at(logits, batch.read_positions)).mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(batch.clean_tokens)
        patched = get_act_patch_attn_head_out_all_pos(model, batch.corrupted_tokens, cache,
                                                      mean_metric)  # metric(patched run)
        corrupted = mean_metric(model(batch.corrupted_tokens))
    theirs = patched - corrupted
    assert ours.shape == theirs.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert theirs.abs().max() > 1e-3  # the comparison is not between two near-zero maps
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-3)
    # the bench's wrapper (reduce="mean", baseline=True, .effect()) gives the same
    torch.testing.assert_close(tl_act_patch_heads(model, batch, cache), theirs, atol=1e-5,
                               rtol=1e-4)


def test_bench_rows_and_ratios(tmp_path, capsys):
    code = main(["bench", "--model", "random:tiny", "--n-prompts", "4", "--attribution-model",
                 "", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    files = list((tmp_path / "bench").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("cpu-")
    report = json.loads(files[0].read_text())
    for row in ("1 act patching", "1b act patching, nnsight", "2 path patching",
                "3 attribution", "4 one forward",
                "targets:"):
        assert row in printed and row in report["table"]
    act, path = report["act_patching"], report["path_patching"]
    assert f"{act['ratio']:.1f}x" in printed and f"{path['ratio']:.1f}x" in printed
    assert act["max_abs_diff"] < 1e-4 and path["max_abs_diff"] < 1e-4
    (row,) = report["attribution"]
    assert -1.0 <= row["attribution"]["pearson_r"] <= 1.0
    met = {t["target"]: t["met"] for t in report["targets"]}
    assert met["act patching vs TransformerLens (x faster) >= 3"] == (act["ratio"] >= 3)
    assert report["provenance"]["model"] == "random:tiny"
    assert report["machine"]["torch_threads"] == torch.get_num_threads()
    assert len(report["machine"]["load_before"]) == 3


def _scripted(monkeypatch, spans):
    """Make interp.bench time each call with the next of `spans` (wall, cpu) seconds."""
    it = iter([bench.Seconds(w, c) for w, c in spans])
    monkeypatch.setattr(bench, "timed", lambda fn: (fn(), next(it)))


def test_act_patching_ratios_from_known_timings(monkeypatch, tiny_ioi):
    """prepare 1 s, sweep 2 s; TransformerLens cache 3 s, sweep 9 s (CPU: .5, 1.5, 2, 6)."""
    model, batch = tiny_ioi
    _scripted(monkeypatch, [(1, .5), (2, 1.5), (3, 2), (9, 6)])
    row, _, _ = bench.bench_act_patching(model, batch, rate=1e9, skip_tl=False, progress=False)
    assert row["interp_s"] == 3 and row["tl_s"] == 12
    assert row["ratio"] == 4.0 and row["ratio_sweep"] == 4.5 and row["ratio_cpu"] == 4.0
    assert row["floor_fraction"] == pytest.approx(row["floor_gflop"] / 2)  # GFLOP / (2 s x 1 GF/s)


def test_attribution_row_from_known_timings(monkeypatch, tiny_ioi):
    model, batch = tiny_ioi
    monkeypatch.setattr(bench, "forward_seconds", lambda m, t: bench.Seconds(0.5, 0.25))
    _scripted(monkeypatch, [(4, 2)])
    exact = (torch.arange(8.0).view(2, 4), bench.Seconds(6, 3), bench.Seconds(5, 2.5))
    row = bench.bench_attribution(model, "random:tiny", batch, "denoise", ["attribution"], 1,
                                  rate=1e9, progress=False, exact=exact)
    assert row["exact"]["forward_equivalents"] == 12  # 6 s / 0.5 s
    assert row["exact"]["forward_equivalents_cpu"] == 12  # 3 s / 0.25 s
    est = row["attribution"]
    assert est["forward_equivalents"] == 8 and est["forward_equivalents_cpu"] == 8


def test_pearson_and_top_overlap_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert bench.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert bench.pearson(a, -a) == pytest.approx(-1.0)
    assert bench.pearson(a, torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) == pytest.approx(0.0)
    # top-2 by |score|: a -> cells 3, 2; b -> cells 3, 0
    assert bench.top_overlap(a, torch.tensor([[-9.0, 0.0], [1.0, 5.0]]), k=2) == 1
    assert bench.top_overlap(a, a, k=10) == 4  # k is capped at the number of heads


def test_targets_met_exactly_at_the_bound():
    """Bounds: act >= 3, path >= 2, forward-equivalents <= 4, Pearson r >= 0.9."""
    report = {"act_patching": {"ratio": 3.0}, "path_patching": {"ratio": 1.99},
              "attribution": [{"model": "m", "attribution": {"forward_equivalents": 4.0,
                                                             "pearson_r": None}}]}
    met = [t["met"] for t in bench.check_targets(report)]
    assert met == [True, False, True, None]  # None: not measured, neither met nor failed


def test_nnsight_sweep_equals_interp(tiny_ioi):
    """The nnsight row's sweep (traced on the HF model) against interp's exact sweep."""
    pytest.importorskip("nnsight")
    from interp.bench_nnsight import nnsight_act_patch_heads

    model, batch = tiny_ioi
    ours = act_patch_heads(model, prepare_runs(model, batch), direction="denoise",
                           progress=False)
    theirs = nnsight_act_patch_heads(model, batch)
    assert theirs.abs().max() > 1e-3  # not two near-zero maps
    assert (theirs - ours).abs().max() <= 1e-5


def test_nnsight_row_is_skipped_with_a_message_when_absent(monkeypatch, tiny_ioi):
    model, batch = tiny_ioi
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    row = bench.bench_nnsight(model, batch, None, {}, rate=1e9)
    assert row == {"skipped": "skipped: nnsight is not installed (pip install -e .[bench])"}


def test_experiments_table_and_json(tmp_path, monkeypatch, capsys):
    """Every command of the issue's table is printed and written, with its verdict."""
    import interp.bench_experiments as bx

    def fake(spec):
        fast = spec["name"].startswith("evaluate")
        return {"rc": 0, "wall_s": 10.0 if fast else 300.0, "cpu_s": 9.0,
                "peak_rss_mb": 2000.0, "forward_equivalents": 5.0}

    monkeypatch.setattr(bx, "run_one", fake)
    assert main(["bench", "--experiments", "--model", "random:tiny", "--out",
                 str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (path,) = (tmp_path / "bench").glob("*-experiments.json")
    report = json.loads(path.read_text())
    names = [row["name"] for row in report["experiments"]]
    assert names == [e["name"] for e in bx.experiments("random:tiny")]
    for name in names:
        assert name in printed
    verdicts = {row.split()[0] + row.split()[1]: row for row in printed.splitlines()[2:6]}
    assert "MISSED; RSS MET" in verdicts["ioi--n-prompts"]
    assert verdicts["evaluate-circuit--task"].endswith("MET")


def test_experiment_child_counts_at_least_the_minimum():
    """One command in-process: forward-equivalents counted >= the stages' minimums."""
    from interp.bench_experiments import child

    result = child({"argv": ["ioi", "--model", "random:tiny", "--n-prompts", "4",
                             "--n-mean-prompts", "1", "--quiet"], "n_prompts": 4})
    assert result["rc"] == 0 and result["peak_rss_mb"] > 0
    assert result["forward_equivalents"] >= result["minimum"] > 0
    assert set(result["stages"]) >= {"dataset", "mean_sample", "classification"}


def test_experiment_child_reads_discover_stage_minimums():
    """discover's summary records per-stage minimums (`stages`); the bench row sums them."""
    from interp.bench_experiments import child

    result = child({"argv": ["discover", "--model", "random:tiny", "--task", "ioi",
                             "--n-prompts", "4"], "n_prompts": 4})
    assert result["rc"] == 0
    stages = result["stages"]
    # the corrupted run comes from the cached runs: one forward and backward of the clean run
    assert stages["edge scores"]["forward_equivalents"] == \
        stages["edge scores"]["minimum_forward_equivalents"] == 3
    assert result["forward_equivalents"] >= result["minimum"] > 0


def test_experiments_report_records_provenance(tmp_path):
    """`interp bench --experiments` writes into results/: its report carries provenance."""
    from interp.bench_experiments import run_experiments

    circuit = tmp_path / "c.yaml"
    circuit.write_text("name: x\ngroups:\n  a: [L0H0, L1H2]\n")
    report = run_experiments("random:tiny", only=["evaluate-circuit"], circuit=circuit)
    (row,) = report["experiments"]
    assert "error" not in row, row
    assert row["wall_s"] > 0 and row["peak_rss_mb"] > 0
    prov = report["provenance"]
    assert prov["model"] == "random:tiny" and prov["git_commit"] and prov["versions"]["torch"]
    assert set(prov["wall_time_s"]) == {"evaluate-circuit --task ioi"}
