"""Every bench script runs: a tiny smoke run of each (tiny model, a few examples, one round), in both dtypes.

The smoke runs check that a script finishes and that what it writes names the machine it ran on (device, CPU
kind from the CPU flags) and the dtype it computed in; they never check a speed. Scripts run in this process
through their `main(argv)` (their own children still run as subprocesses), which saves an interpreter start.
"""
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from flops import lora_params, training_flops  # noqa: E402
from machine import bench_dtype, dtype_name, machine_record, matmul_gflops, train_quant_flag  # noqa: E402

from common.env import cpu_flags, cpu_kind  # noqa: E402
from common.text.prompts import IGNORE_INDEX  # noqa: E402
from common.model.load import cpu_has_native_bf16, half_dtype  # noqa: E402

CPU = torch.device("cpu")


def bench_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------- machine and dtype

@pytest.mark.parametrize("flags, kind", [
    ({"sse4_2", "avx", "avx2", "fma"}, "avx2"),
    ({"avx2", "avx512f", "avx512_bf16"}, "avx512-bf16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "amx"),
    ({"fp", "asimd"}, "other"),
    (set(), "other"),
])
def test_cpu_kind_follows_the_flags(flags, kind):
    assert cpu_kind(frozenset(flags)) == kind


def test_this_machine_kind_agrees_with_the_dtype_choice():
    assert (cpu_kind() in ("amx", "avx512-bf16")) == cpu_has_native_bf16()
    record = machine_record(CPU, bench_dtype("auto", CPU))
    assert record["cpu_kind"] == cpu_kind() and record["dtype"] == dtype_name(half_dtype(CPU))
    assert set(record["cpu_bf16_flags"]) <= cpu_flags()


def test_fp32_flag_forces_fp32_and_train_py_32bit():
    assert bench_dtype("fp32", CPU) == torch.float32
    assert bench_dtype("auto", CPU) == half_dtype(CPU)
    assert train_quant_flag(torch.float32) == "32bit" and train_quant_flag(torch.bfloat16) == "16bit"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_peak_is_measured_in_the_dtype_asked(dtype):
    peak = matmul_gflops(dtype, CPU, budget_s=0.05, repeats=2, max_n=128)
    assert 64 <= peak["n"] <= 128 and peak["gflops"] > 0


def test_training_flops_match_the_formula_by_hand():
    class Config:  # 1 layer, d=8, 2 heads of 4 (h=8), 1 kv head (kv width 4), intermediate 16, vocab 10
        hidden_size, num_attention_heads, num_key_value_heads, head_dim = 8, 2, 1, 4
        num_hidden_layers, intermediate_size, vocab_size = 1, 16, 10

    example = {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}
    n_linear = 8 * 8 + 2 * 8 * 4 + 8 * 8 + 3 * 8 * 16       # q, k, v, o, gate/up/down
    n_lora = 2 * ((8 + 8) + 2 * (8 + 4) + (8 + 8))          # r=2 on q, k, v, o
    assert lora_params(Config, rank=2) == n_lora
    expected = (4 * n_linear + 6 * n_lora) * 3 + 4 * 10 * 8 * 2 + 12 * 1 * 8 * (3 * 4 // 2)
    assert training_flops(Config, [example], rank=2) == expected


def test_mfu_is_against_the_peak_given():
    summarize = bench_script("train_compare").summarize

    class Config:
        hidden_size, num_attention_heads, num_key_value_heads, head_dim = 8, 2, 2, 4
        num_hidden_layers, intermediate_size, vocab_size = 1, 16, 10

    examples = [{"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, 2, 3, 4]}] * 3
    result = {"steps": [[0], [1, 2]], "positions": [4, 8], "seconds": 2.0, "dtype": "bfloat16", "peak_rss_mb": 1.0}
    row = summarize(result, examples, Config, warmup=1, peak_gflops=1e-6)
    flops_per_s = training_flops(Config, examples[1:]) / 2.0
    assert row["mfu"] == pytest.approx(flops_per_s / 1e3) and row["tokens_per_s"] == 4.0


# ---------------------------------------------------------------------------- smoke runs

@pytest.mark.slow
def test_train_compare_smoke(tiny_model, tmp_path):
    """The whole script with train.py in fp32 (--dtype fp32, the AVX2 path): one round, one subprocess."""
    out = tmp_path / "tc.json"
    bench_script("train_compare").main(["--model", tiny_model, "--examples", "12", "--repeats", "1", "--warmup", "1",
                                        "--peak-seconds", "0.05", "--variants", "ours,ours-budget", "--budget",
                                        "512", "--dtype", "fp32", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["machine"]["dtype"] == "float32"
    assert report["matmul_peak_gflops"]["dtype"] == "float32"
    row, budget = report["medians"]
    assert row["variant"] == "ours" and row["dtype"] == "float32" and row["tokens_per_s"] > 0 and row["mfu"] > 0
    assert set(report["targets"]["ours"]) == {"mfu"}
    # the token budget bounds every step, and the bench checked it trained on the same examples
    assert budget["variant"] == "ours-budget" and budget["max_step_positions"] <= 512 < row["max_step_positions"]


@pytest.mark.slow
def test_train_compare_trainer_baseline_in_the_machines_dtype(tiny_model, tmp_path):
    """(c) in the machine's own dtype, bf16 here: transformers refuses bf16 on a CPU without use_cpu=True. Runs in
    this process (the script runs it as a child) to save an interpreter start."""
    from accelerate.state import AcceleratorState
    from transformers import AutoConfig

    tc = bench_script("train_compare")
    examples, _ = tc.build_examples(tiny_model, 12, 0)
    dtype = bench_dtype("auto", CPU)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"variant": "c-trainer-dynamic", "model": tiny_model, "examples": examples, "seed": 0,
                                "warmup": 1, "max_steps": 0, "quant": train_quant_flag(dtype),
                                "result": str(tmp_path / "result.json"), "output_dir": str(tmp_path / "trainer")}))
    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton other tests may have built
    tc.child_main(str(spec))
    result = json.loads((tmp_path / "result.json").read_text())
    config = AutoConfig.from_pretrained(tiny_model)
    tc.check_same_work("c-trainer-dynamic", result, examples, config, dtype_name(dtype), full_epoch=True)
    assert len(result["steps"]) == 3 and result["seconds"] > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl (bench/requirements.txt) not installed")
def test_train_compare_trl_smoke(tiny_model, tmp_path):
    out = tmp_path / "tc.json"
    bench_script("train_compare").main(["--model", tiny_model, "--examples", "12", "--repeats", "1", "--warmup", "1",
                                        "--peak-seconds", "0.05", "--variants", "b-trl-padding-free",
                                        "--out", str(out)])
    assert json.loads(out.read_text())["medians"][0]["tokens_per_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["auto", "fp32"])
def test_profile_step_smoke(tiny_model, capsys, dtype):
    bench_script("profile_step").main(["--model", tiny_model, "--examples", "40", "--timed", "1", "--profiled", "1",
                                       "--rows", "3", "--peak-seconds", "0.05", "--dtype", dtype])
    printed = capsys.readouterr().out
    used = dtype_name(bench_dtype(dtype, CPU))
    assert f"cpu {cpu_kind()}" in printed and f"MFU of the {used} matmul peak" in printed and "aten::" in printed


@pytest.mark.slow
def test_train_quant_smoke_fp32(tiny_model, tmp_path):
    out = tmp_path / "tq.json"
    bench_script("train_quant").main(["--model", tiny_model, "--modes", "32bit", "--steps", "2", "--warmup", "1",
                                      "--repeats", "1", "--limit", "24", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind()
    (row,) = report["rows"]
    assert row["compute_dtype"] == "float32" and row["median_tokens_per_s"] > 0


@pytest.mark.slow
def test_allocator_smoke(tiny_model, tmp_path):
    out = tmp_path / "alloc.json"
    bench_script("allocator").main(["--model", tiny_model, "--variants", "0,256+thp", "--steps", "2", "--warmup",
                                    "1", "--repeats", "1", "--limit", "24", "--format", "completion", "--out",
                                    str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind()
    assert [r["variant"] for r in report["rows"]] == ["0", "256+thp"]
    assert all(r["median_tokens_per_s"] > 0 and r["peak_rss_mb"] >= r["rss_after_last_step_mb"] > 0
               for r in report["rows"])


@pytest.mark.slow
def test_scaling_smoke(tiny_model, tmp_path):
    out = tmp_path / "scaling.json"
    bench_script("scaling").main(["--model", tiny_model, "--seq-lens", "256", "--ranks", "16", "--rank-seq-len",
                                  "256", "--steps", "2", "--warmup", "1", "--limit", "24", "--out", str(out),
                                  "--plots", str(tmp_path)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["dtype"] == dtype_name(half_dtype(CPU))
    assert report["seq_len_sweep"][0]["median_tokens_per_s"] > 0 and (tmp_path / "scaling_rank.png").is_file()


@pytest.mark.slow
def test_quant_memory_smoke(tmp_path):
    out = tmp_path / "qm.json"
    bench_script("quant_memory").main(["--shape", "tiny", "--layers", "1", "--modes", "16bit", "--steps", "1",
                                       "--warmup", "0", "--seq-len", "16", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind()
    (memory,) = report["memory"]
    assert memory["dense dtype"] == dtype_name(half_dtype(CPU)) and memory["B/param linear"] > 0


@pytest.mark.slow
def test_generation_speed_smoke(tiny_model, tmp_path):
    out = tmp_path / "gs.json"
    bench_script("generation_speed").main(["--model", tiny_model, "--prompts", "2", "--batch-size", "2",
                                           "--max-new-tokens", "4", "--repeats", "1", "--no-e2e", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["dtype"] == dtype_name(half_dtype(CPU))
    assert report["identical_outputs"] == "2/2"


@pytest.mark.slow
def test_step_variants_smoke(tiny_model, tmp_path):
    out = tmp_path / "sv.json"
    bench_script("step_variants").main(["--model", tiny_model, "--examples", "16", "--rounds", "1", "--warmup", "0",
                                        "--dtype", "fp32", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["dtype"] == "float32" and report["machine"]["cpu_kind"] == cpu_kind()
    assert [row["variant"] for row in report["rows"]] == ["baseline", "fused-adamw", "fused-head", "both",
                                                          "no-dropout", "fused-lora"]
    assert all(row["steps"] == 1 and row["real tokens/s"] > 0 for row in report["rows"])


def test_head_loss_smoke(tmp_path):
    out = tmp_path / "hl.json"
    bench_script("head_loss").main(["--rows", "40", "--vocab", "500", "--hidden", "16", "--chunks", "16",
                                    "--repeats", "1", "--dtype", "fp32", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["dtype"] == "float32"
    assert [row["variant"] for row in report["table"]] == ["plain", "fused-16"]


def test_sandbox_speed_smoke(tmp_path):
    out = tmp_path / "ss.json"
    bench_script("sandbox_speed").main(["--problems", "2", "--repeats", "1", "--workers", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["problems"] == 2
    assert all(row["passed"] == "2/2" for row in report["rows"])


# ---------------------------------------------------------------------------- throughput changes: equivalence

def lora_llama(dtype: torch.dtype, tie: bool = True):
    """A 2-layer llama with LoRA r4 on all linear layers, random weights, LoRA B non-zero so gradients flow."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.model.lora import attach_lora

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    model = attach_lora(LlamaForCausalLM(config).to(dtype), 4, 8, 0.0, "all")
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def prompt_masked_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (3, 20), generator=generator)
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX            # the prompt
    labels[2, 15:] = IGNORE_INDEX           # a shorter row, right-padded
    mask = (labels != IGNORE_INDEX) | (torch.arange(20) < 8)
    return {"input_ids": ids, "labels": labels, "position_ids": torch.arange(20).expand(3, 20), "attention_mask": mask}


def loss_and_grads(loss_fn, batch, dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from common.train.steps import autocast

    loss_fn.model.zero_grad(set_to_none=True)
    with autocast(CPU, dtype):
        loss, n = loss_fn(**batch)
        (loss / n).backward()
    return loss.detach(), {k: p.grad.clone() for k, p in loss_fn.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("tie", [True, False])
def test_fused_head_cross_entropy_gives_the_same_loss_and_gradients(dtype, tol, tie):
    from common.train.steps import CompletionLoss

    model, batch = lora_llama(dtype, tie), prompt_masked_batch()
    plain_loss, plain_grads = loss_and_grads(CompletionLoss(model), batch, dtype)
    fused_loss, fused_grads = loss_and_grads(CompletionLoss(model, head_chunk=7), batch, dtype)  # 5 chunks of <= 7
    assert fused_loss == pytest.approx(float(plain_loss), rel=tol)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) == 2 * 2 * 7
    for name, grad in plain_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=tol, atol=tol * grad.abs().max().item(), msg=name)


def test_fused_head_cross_entropy_without_grad_and_with_a_softcap():
    from common.train.steps import CompletionLoss, fused_head_cross_entropy

    model, batch = lora_llama(torch.float32), prompt_masked_batch()
    with torch.no_grad():
        plain, n = CompletionLoss(model)(**batch)
        fused, m = CompletionLoss(model, head_chunk=4)(**batch)
    assert int(n) == int(m) == 2 * 12 + 7 and float(fused) == pytest.approx(float(plain), rel=1e-5)
    model.config.final_logit_softcapping = 0.01 # gemma: the fused path has no softcap, so it must not be taken
    with torch.no_grad():
        capped_plain, _ = CompletionLoss(model)(**batch)
        capped_fused, _ = CompletionLoss(model, head_chunk=4)(**batch)
    assert float(capped_fused) == float(capped_plain) != pytest.approx(float(plain), rel=1e-4)
    hidden, weight = torch.randn(5, 6), torch.randn(9, 6)
    targets = torch.tensor([0, 8, 3, 3, 1])
    expected = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    assert float(fused_head_cross_entropy(hidden, weight, targets, chunk=2)) == pytest.approx(float(expected), rel=1e-6)


def test_fused_adamw_takes_the_same_steps_as_the_default():
    from common.train.steps import adamw

    torch.manual_seed(0)
    start = [torch.randn(16, 24), torch.randn(24, 16), torch.randn(7)]
    grads = [[torch.randn_like(t) for t in start] for _ in range(3)]
    params = {name: [torch.nn.Parameter(t.clone()) for t in start] for name in ("default", "fused")}
    optimizers = {"default": torch.optim.AdamW(params["default"], lr=1e-2, weight_decay=0.1, foreach=False),
                  "fused": adamw(params["fused"], lr=1e-2, weight_decay=0.1)}
    assert optimizers["fused"].defaults["fused"] is True
    for step_grads in grads:
        for name, optimizer in optimizers.items():
            for p, g in zip(params[name], step_grads):
                p.grad = g.clone()
            optimizer.step()
    for a, b in zip(params["default"], params["fused"]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    assert not torch.equal(params["fused"][0], start[0])


# ---------------------------------------------------------------------------- token-budget batching

def examples_of_lengths(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [5] * n, "labels": [5] * n} for n in lengths]


@pytest.mark.parametrize("packing", [False, True])
def test_token_budget_bounds_every_step_and_covers_each_example_once(packing):
    from common.train.batching import epoch_batches

    generator = torch.Generator().manual_seed(0)
    examples = examples_of_lengths(torch.randint(5, 120, (200,), generator=generator).tolist())
    batches = epoch_batches(examples, 4, seed=3, epoch=1, packing=packing, max_seq_len=128, max_tokens=512)
    assert batches == epoch_batches(examples, 4, seed=3, epoch=1, packing=packing, max_seq_len=128, max_tokens=512)
    seen = sorted(i for batch in batches for row in batch for i in row)
    assert seen == list(range(200))
    widths = [max(sum(len(examples[i]["input_ids"]) for i in row) for row in batch) for batch in batches]
    assert all(len(batch) * width <= 512 for batch, width in zip(batches, widths))
    assert max(len(batch) for batch in batches) > 4  # short examples share a step: it is not a fixed row count
    fixed = epoch_batches(examples, 4, seed=3, epoch=1, packing=packing, max_seq_len=128)
    assert all(len(batch) <= 4 for batch in fixed)


def test_budget_cuts_and_a_budget_below_the_longest_example():
    from common.train.batching import budget_cuts, epoch_batches
    from common.errors import UserError

    assert budget_cuts([10, 20, 30, 100, 200], 200) == [0, 3, 4, 5]
    assert budget_cuts([300], 200) == [0, 1] and budget_cuts([], 200) == [0]
    with pytest.raises(UserError, match="--max-tokens 100 is below --max-seq-len 128"):
        epoch_batches(examples_of_lengths([10]), 4, 0, 0, False, 128, max_tokens=100)


@pytest.mark.slow
def test_batch_invariance_smoke(tiny_model, tmp_path):
    out = tmp_path / "bi.json"
    bench_script("batch_invariance").main(["--model", tiny_model, "--prompts", "2", "--batch-size", "2",
                                           "--max-new-tokens", "4", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    half = dtype_name(half_dtype(CPU))
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["machine"]["dtype"] == half
    assert set(report["runs"]) == {f"{half} batch 2", "fp32 batch 2", f"{half} batch 1", "fp32 batch 1"}
    # fp32 decoding is what evaluate.py relies on to make greedy outputs independent of the batch size
    assert report["equal_fp32"] == 2 and all(len(run["texts"]) == 2 for run in report["runs"].values())


@pytest.mark.slow
def test_eval_speed_smoke(tiny_model, tmp_path):
    out = tmp_path / "es.json"
    bench_script("eval_speed").main(["--model", tiny_model, "--prompts", "3", "--batch-size", "2",
                                     "--max-new-tokens", "4", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["speedup"] > 0
    assert list(report["paths"]) == ["batch at a time (before)", "continuous (now)"]
    assert report["identical_outputs"] == report["outputs"] == 3  # the old decoder, loaded from git, agrees
    assert all(path["completion_tokens"] == 12 for path in report["paths"].values())


@pytest.mark.slow
def test_protocol_pass_rate_smoke(tiny_model, tmp_path):
    out = tmp_path / "ppr.json"
    bench_script("protocol_pass_rate").main(["--model", tiny_model, "--limit", "2", "--protocols",
                                             "completion,instruct", "--max-new-tokens", "4", "--batch-size", "2",
                                             "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"]["cpu_kind"] == cpu_kind() and report["machine"]["dtype"] == "float32"
    for protocol in ("completion", "instruct"):
        summary, rows = report["runs"][protocol]["summary"], report["runs"][protocol]["rows"]
        # a random 2-layer model passes nothing; every program still ran in the sandbox and got an outcome
        assert summary["problems"] == 2 and summary["passed"] == 0 and sum(summary["statuses"].values()) == 2
        assert [row["task_id"] for row in rows] == ["HumanEval/0", "HumanEval/1"]


@pytest.mark.slow
def test_estimate_measure_and_check_smoke(tiny_model, tmp_path):
    """Measure one config on the tiny model, then compare the estimator's prediction with it."""
    measured, checked = tmp_path / "measured.json", tmp_path / "check.json"
    bench_script("estimate_measure").main(["--model", tiny_model, "--only", "1", "--steps", "2", "--out",
                                           str(measured)])
    (row,) = json.loads(measured.read_text())
    assert row["config"]["model"] == tiny_model and row["steps"] == 2 and len(row["step_s"]) == 2
    # peak (getrusage) and per-step RSS (/proc/self/statm) come from the kernel's per-thread counters, which it
    # syncs lazily: on a tiny model whose peak is its last step they can differ by a fraction of a MB
    assert row["machine"]["cpu_kind"] == cpu_kind() and row["peak_rss_mb"] >= 0.99 * max(row["rss_after_step_mb"])
    bench_script("estimate_check").main(["--measured", str(measured), "--out", str(checked)])
    (check,) = json.loads(checked.read_text())["rows"]
    assert check["measured_peak_mb"] == row["peak_rss_mb"] and check["predicted_peak_mb"] > 0
    assert check["peak_error"] == pytest.approx(check["predicted_peak_mb"] / check["measured_peak_mb"] - 1)


def test_gpu_check_refuses_a_cpu_without_allow_cpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal is for CPU-only machines")
    assert bench_script("gpu_check").main([]) == 2
    assert "--allow-cpu" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_runs_its_checks_on_a_cpu(tmp_path):
    """The CUDA check script at tiny size on a CPU (--allow-cpu), one of its checks (the others start train.py
    and sweep.py, which their own tests cover), so the script cannot rot unseen."""
    out = tmp_path / "gc.json"
    skip = ("train-16bit,train-8bit,train-4bit,paged-adamw-8bit,resume-after-sigterm,sweep-gpu-pinning,"
            "train-bench-smoke")
    assert bench_script("gpu_check").main(["--allow-cpu", "--skip", skip, "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary["checks"]) == {"batched-generation"} and summary["passed"] == 1
    assert summary["checks"]["batched-generation"]["identical"] == "8/8"


def test_the_1b_llama_is_predicted_from_its_config_alone(tmp_path):
    """bench/estimate_check.py predicts the 1.1B llama rows without making weights: 1.17B parameters, and the
    4-bit weights about a third of the 16-bit ones (the embeddings and head stay in bf16)."""
    from common.train import estimate as E
    from common.config import TrainConfig

    measure = bench_script("estimate_measure")
    directory = measure.write_llama_1b(tmp_path / "llama", weights=False)
    assert not list(directory.glob("*.safetensors"))
    estimates = {quant: E.estimate_run(TrainConfig(**{**measure.COMMON, **config, "model": str(directory),
                                                      "max_steps": 3}), CPU, dtype=torch.bfloat16)
                 for config in measure.CONFIGS if config.get("model") == measure.LLAMA
                 for quant in [config["quant"]]}
    assert set(estimates) == {"16bit", "8bit", "4bit"}
    assert estimates["16bit"].params == pytest.approx(1.17e9, rel=0.01)
    assert 0.3 < estimates["4bit"].weights_mb / estimates["16bit"].weights_mb < 0.45
