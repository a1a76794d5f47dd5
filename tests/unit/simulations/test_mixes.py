import pytest

from simulations import fgd, mixes, traces
from simulations.traces import TraceError, TracePod


def pods() -> list[TracePod]:
    # Demand (num_gpu x gpu_milli): 1000 + 500 + 1000 + 2000 + 8000 = 12,500; one CPU-only pod.
    return [
        TracePod("a", 4000, 1024, 1, 1000),
        TracePod("b", 2000, 1024, 1, 500),
        TracePod("c", 4000, 1024, 1, 1000),
        TracePod("d", 8000, 2048, 2, 1000),
        TracePod("e", 32000, 8192, 8, 1000),
        TracePod("cpu", 1000, 512, 0, 0),
    ]


@pytest.mark.parametrize("share", [0.0, 0.3, 0.4, 0.5])
def test_resample_keeps_demand_and_sets_the_share(share: float) -> None:
    out = mixes.resample(pods(), share, seed=1)
    demand = sum(p.gpu_total for p in out)
    # Drawing stops at the first pod that reaches 12,500: at most one pod (8,000) beyond it.
    assert 12_500 <= demand < 12_500 + 8_000
    gpu = [p for p in out if p.gpu_total]
    multi = sum(p.num_gpu > 1 for p in gpu)
    # A draw is multi-GPU while multi < share x (drawn + 1): multi = ceil(share x drawn), within one pod.
    assert share * len(gpu) - 1e-9 <= multi < share * len(gpu) + 1
    assert [p.name for p in out if not p.gpu_total] == ["cpu"]  # CPU-only pods kept as they are
    assert mixes.resample(pods(), share, seed=1) == out  # seeded
    assert all(p.name.split("-mix-")[0] in "abcde" for p in gpu)


def test_resample_errors() -> None:
    with pytest.raises(ValueError, match="share"):
        mixes.resample(pods(), 1.0, seed=1)
    with pytest.raises(TraceError, match="2-8 GPUs"):
        mixes.resample([p for p in pods() if p.num_gpu < 2], 0.4, seed=1)
    with pytest.raises(TraceError, match="unknown mix"):
        mixes.load_mix("gs-multigpu99", pods())


def test_bundled_mixes_from_the_default_trace() -> None:
    base = traces.load_pods(traces.pod_file("default"))
    demand = sum(p.gpu_total for p in base)
    for name, mix in mixes.MIXES.items():
        out = mixes.load_mix(name, base)
        assert abs(mixes.multi_gpu_share(out) - mix.share) < 0.01, name
        assert demand <= sum(p.gpu_total for p in out) < demand + 8000, name
    # fgd-table runs a mix as a trace: the default trace's file, resampled under the mix's label.
    (task,) = fgd.trace_tasks(["gs-multigpu40"], ["fgd"], [42])
    assert task[0] == "gs-multigpu40" and task[2] == str(traces.pod_file("default"))
    _, loaded, typical = fgd._load(task[1], task[2], task[0])
    assert loaded == mixes.load_mix("gs-multigpu40", base)
    assert any(t.gpus == 8 for t in typical)
