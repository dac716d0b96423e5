"""gencore.benchmarks: the ratio table, the memcpy roofline case, timing, and the group_norm_silu case list."""
from __future__ import annotations

import torch

import gencore
from gencore.benchmarks import Case, Result, memcpy_case, run, table


def _result(provider, seconds, nbytes=8_000_000, mode="forward"):
    return Result(Case("op", provider, "(2,3)", "float32", mode, nbytes, lambda: (lambda: None)), seconds)


def test_table_reports_ratios_against_eager_compile_and_memcpy():
    md = table([_result("reference", 3.0), _result("torch_compile", 1.5), _result("cpu", 1.0),
                _result("memcpy", 0.5), _result("cpu", 2.0, mode="backward")])
    lines = md.splitlines()
    assert lines[0].split(" | ")[4:8] == ["reference ms", "torch_compile ms", "cpu ms", "memcpy ms"]
    forward, backward = lines[2], lines[3]
    assert "| 3.00x | 1.50x |" in forward  # reference / cpu, torch_compile / cpu
    assert "0.0 / 0.0 = 50%" in forward  # cpu moves the bytes in twice memcpy's time
    assert backward.count("| -") >= 3  # no baseline measured for this mode: no ratio invented


def test_memcpy_case_moves_the_given_bytes_and_run_times_it():
    case = memcpy_case("op", "s", "float32", "forward", 2 << 20, "cpu")
    (result,) = run([case], min_time=0.01, progress=False)
    assert result.seconds > 0 and result.gbps > 0
    assert case.bytes == 2 << 20


def test_group_norm_silu_cases_cover_providers_and_modes():
    from gencore.benchmarks.group_norm_silu import cases

    cs = cases("cpu", quick=True)
    providers = {c.provider for c in cs}
    assert {"reference", "torch_compile", "memcpy"} <= providers
    assert ("cpu" in providers) == ("cpu" in gencore.available_backends())
    assert {c.mode for c in cs} == {"forward", "backward", "forward+backward"}
    full = cases("cpu")
    assert {c.shape for c in full} == {"(64,64,28,28) G=8", "(64,128,14,14) G=8", "(8,320,64,64) G=32",
                                       "(1,512,64,64) G=32"}
    # The closures run (each once) and return what they computed.
    ref = next(c for c in cs if c.provider == "reference" and c.mode == "forward+backward")
    grads = ref.setup()()
    assert len(grads) == 4


def test_every_quick_sampler_step_case_runs():
    """Each case's setup and one call, without timing: a case that no longer matches the op (the coefficient table
    grew to 11 columns and the DDIM case still built 9) must fail here, not in a user's `gencore bench`."""
    from gencore.benchmarks.sampler_step import MODES, cases

    cs = [c for c in cases("cpu", quick=True) if c.provider != "torch_compile"]  # compiling is bench's business
    assert {c.mode for c in cs} == set(MODES)
    for case in cs:
        case.setup()()


def test_peak_memory_counts_what_a_call_holds_at_once():
    from gencore.benchmarks import peak_memory

    mb = 2**20

    def one_output():
        return torch.empty(4 * mb, dtype=torch.uint8).fill_(1)

    def temporaries_in_turn():  # two 4 MB temporaries, never alive together, and a 1 MB output
        for _ in range(2):
            t = torch.empty(4 * mb, dtype=torch.uint8).fill_(1)
            del t
        return torch.empty(mb, dtype=torch.uint8)

    def both_alive():
        a = torch.empty(4 * mb, dtype=torch.uint8).fill_(1)
        b = torch.empty(4 * mb, dtype=torch.uint8).fill_(1)
        return a[:1] + b[:1]

    assert 4 * mb <= peak_memory(one_output, "cpu") < 5 * mb
    assert 4 * mb <= peak_memory(temporaries_in_turn, "cpu") < 6 * mb
    assert 8 * mb <= peak_memory(both_alive, "cpu") < 9 * mb


def test_table_reports_peak_memory_beside_time():
    rows = [_result("torch", 2.0), _result("cpu", 1.0)]
    rows[0].peak_bytes, rows[1].peak_bytes = 80 * 2**20, 40 * 2**20
    head, _, row = table(rows).splitlines()
    assert head.rstrip(" |").endswith("peak MB: torch / cpu") and row.rstrip(" |").endswith("80 / 40")


def test_a_first_call_case_is_timed_by_one_call_and_figures_become_columns():
    calls = []

    def setup():
        return lambda: calls.append(1)

    once = Case("op", "torch_compile", "s", "float32", "first call", 0, setup, repeat=False)
    shared = Case("op", "torch", "s", "float32", "forward", 0, setup, figures=lambda fn: {"share": "12%"})
    first, timed = run([once, shared], min_time=0.01, progress=False, memory=False)
    assert first.times == [first.seconds] and len(calls) > 1 + 2  # once: 1 call; the repeated case: warm-up + blocks
    calls.clear()
    run([once], progress=False)
    assert len(calls) == 1
    assert timed.figures == {"share": "12%"} and first.figures == {}
    head, _, row = table([first, timed]).splitlines()[:3]
    assert head.endswith("| share |") and row.endswith("| - |")  # the figure's own group: torch's row
    assert table([first, timed]).splitlines()[3].endswith("| torch: 12% |")


def test_norm_activation_share_is_the_time_of_group_norm_silu_and_the_embedding_add():
    from gencore.benchmarks.diffusers import norm_activation_share

    x, t = torch.randn(4, 64, 32, 32), torch.randn(4, 64, 1, 1)
    w = torch.randn(64, 64, 3, 3)
    fused_only = norm_activation_share(lambda: torch.nn.functional.silu(torch.nn.functional.group_norm(x + t, 8)))
    conv_only = norm_activation_share(lambda: torch.nn.functional.conv2d(x, w, padding=1) + x)  # a residual add
    assert float(fused_only["GN+SiLU+temb share"].rstrip("%")) >= 90
    assert float(conv_only["GN+SiLU+temb share"].rstrip("%")) <= 1
