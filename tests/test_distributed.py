"""Data-parallel training (bitsmith.distributed): two processes on tiny data train the same model as
one, only rank 0 writes, resume and refusals reach every rank, DDP QAT gives a graph that verifies."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from bitsmith import distributed
from bitsmith.errors import ConfigError, OutputError
from bitsmith.runs import load_run, read_checkpoint
from bitsmith.train import TrainConfig, train

TINY = TrainConfig(model="lenet5", dataset="digits", epochs=2, batch_size=64)  # 1437 + 360 images of 8 x 8
QAT_IMAGES = 256


class _Stop(Exception):
    """Stands for a process killed after its first checkpoint."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _untimed(metrics: dict) -> dict:
    """Metrics without their wall times."""
    return {k: v for k, v in metrics.items() if k != "train_seconds"} | {
        "history": [{k: v for k, v in r.items() if k != "seconds"} for r in metrics["history"]]}


def _worker(rank: int, world: int, root: str, port: int) -> None:
    """One rank of the two: as torchrun would start it (its environment), each in a folder of its own,
    so that whatever a rank writes by a relative path lands apart (as on machines without a shared disk)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    home = Path(root) / f"rank{rank}"
    home.mkdir()
    os.chdir(home)
    from bitsmith.pipeline import qat_config, qat_run

    trained = []  # the modules each job hands to DDP, to compare the ranks' final parameters
    wrap = distributed.wrap

    def capture(model, ctx, **options):
        trained.append(model)
        return wrap(model, ctx, **options)

    distributed.wrap = capture
    result = {}
    with pytest.raises(_Stop), distributed.session() as ctx:  # leaves by an error: the group must still close
        result["context"] = (ctx.rank, ctx.world_size, ctx.is_main)
        result["metrics"] = train(TINY, "full", quiet=True)
        result["full"] = _state(trained[-1])

        def stop_after_first(record):
            if record["epoch"] == 1:
                raise _Stop
        with pytest.raises(_Stop):
            train(TINY, "resumed", quiet=True, progress=stop_after_first)
        result["resumed_metrics"] = train(TINY, "resumed", resume=True, quiet=True)
        result["resumed"] = _state(trained[-1])

        if ctx.is_main:  # a folder bitsmith did not write: only rank 0 sees it, every rank must stop
            Path("mine").mkdir()
            (Path("mine") / "notes.txt").write_text("not a run")
        with pytest.raises(OutputError) as refused:
            train(TINY, "mine", quiet=True)
        result["refused"] = str(refused.value)

        run = Path(root) / "rank0" / "full"  # QAT reads the float run on every rank
        config = qat_config(run, "lsq", epochs=1)
        result["qat_metrics"] = qat_run(run, "qat", config, quiet=True, train_limit=QAT_IMAGES)
        result["qat"] = _state(trained[-1])
        raise _Stop
    result["closed"] = not torch.distributed.is_initialized()
    torch.save(result, Path(root) / f"result{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(root), _free_port()), nprocs=2, join=True)
    return root, [torch.load(root / f"result{r}.pt", weights_only=False) for r in range(2)]


def test_both_ranks_end_with_identical_parameters(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["context"] == (0, 2, True) and r1["context"] == (1, 2, False)
    assert r0["closed"] and r1["closed"]  # the session left the process group although it ended in an error
    for key in ("full", "resumed", "qat"):
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)
    assert _untimed(r0["metrics"]) == _untimed(r1["metrics"])  # global-batch figures, the same on every rank
    assert r0["metrics"]["accuracy"] > 60  # it learned (10 classes)


def test_only_rank_0_writes_and_its_run_loads(two_ranks):
    root, (r0, _) = two_ranks
    assert list((root / "rank1").iterdir()) == []  # rank 1 wrote nothing, not even through the resume
    assert sorted(p.name for p in (root / "rank0").iterdir()) == ["full", "mine", "qat", "resumed"]
    run = load_run(root / "rank0" / "full")
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, r0["full"][name]), name
    checkpoint = read_checkpoint(root / "rank0" / "full")
    assert checkpoint.meta["environment"]["world_size"] == 2
    assert checkpoint.meta["metrics"] == r0["metrics"]


def test_two_ranks_train_what_one_process_trains_with_the_same_global_batch(two_ranks, tmp_path, one_thread):
    _, (r0, _) = two_ranks
    metrics = train(TINY, tmp_path / "single", quiet=True)
    single = load_run(tmp_path / "single").model.state_dict()
    for name, value in single.items():  # the same steps; only the order of float sums differs
        torch.testing.assert_close(r0["full"][name], value, rtol=0, atol=1e-5)
    assert [r["test_acc"] for r in metrics["history"]] == [r["test_acc"] for r in r0["metrics"]["history"]]


def test_resume_under_two_processes_repeats_the_uninterrupted_run(two_ranks):
    root, (r0, r1) = two_ranks
    for name, value in r0["full"].items():
        assert torch.equal(r0["resumed"][name], value), name
    assert r0["resumed_metrics"]["accuracy"] == r0["metrics"]["accuracy"]
    assert [r["epoch"] for r in r1["resumed_metrics"]["history"]] == [1, 2]  # rank 1 got rank 0's checkpoint
    assert read_checkpoint(root / "rank0" / "resumed").meta["epoch"] == 2


def test_a_folder_refused_on_rank_0_stops_every_rank(two_ranks):
    _, (r0, r1) = two_ranks
    assert "mine" in r0["refused"] and r0["refused"] == r1["refused"]


def test_ddp_qat_gives_an_integer_graph_that_loads_and_verifies(two_ranks):
    from bitsmith.integer.graph import load
    from bitsmith.verify import verification_inputs, verify

    root, (r0, r1) = two_ranks
    graph = load(root / "rank0" / "qat")
    report = verify(graph, "accel", verification_inputs(graph, 4))
    assert report.passed, report
    assert r0["qat_metrics"]["agreement"] == 1.0
    assert r0["qat_metrics"]["train_images"] == QAT_IMAGES
    assert set(r1["qat_metrics"]) == {"history"}  # rank 1 trained alongside, rank 0 lowered and measured
    assert _untimed({"history": r1["qat_metrics"]["history"]}) == _untimed({"history": r0["qat_metrics"]["history"]})


# -- one process: the helpers are the identity ---------------------------------------------------------

def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.session() as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
        assert distributed.all_sum([1.5, 2.0]) == [1.5, 2.0]
        assert distributed.on_main(lambda: 7) == 7
        model = torch.nn.Linear(2, 2)
        assert distributed.wrap(model, ctx) is model
        batches = [(torch.ones(4, 2), torch.arange(4))]
        assert [y.tolist() for _, y in distributed.shard_batches(iter(batches), ctx)] == [[0, 1, 2, 3]]


def test_a_rank_takes_its_contiguous_slice_of_each_global_batch():
    second = distributed.Context(rank=1, world_size=2)
    batches = [(torch.arange(8.0).reshape(4, 2), torch.tensor([5, 6, 7, 8]))]
    (x, y), = distributed.shard_batches(iter(batches), second)
    assert y.tolist() == [7, 8] and x.tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert list(distributed.shard_range(5, second)) == [2, 3, 4]
    assert list(distributed.shard_range(5, distributed.Context(rank=0, world_size=2))) == [0, 1]
    with pytest.raises(ConfigError, match="multiple of 2"):
        distributed.per_rank_batch(63, second)


def test_a_bad_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        with distributed.session():
            pass
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match="outside 0..1"):
        with distributed.session():
            pass


@pytest.mark.slow
def test_torchrun_runs_the_command_line_and_only_rank_0_prints(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    import bitsmith

    source = str(Path(bitsmith.__file__).resolve().parents[1])  # this checkout, whatever the working folder
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m",
                           "bitsmith", "train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1",
                           "--batch-size", "64", "--out", str(tmp_path / "run"), "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # one JSON answer, from rank 0
    assert load_run(tmp_path / "run").meta["environment"]["world_size"] == 2


def test_progress_bars_show_only_on_a_terminal_and_not_when_quiet(monkeypatch):
    from bitsmith.train import progress_bar

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert not progress_bar(False).disable
    assert progress_bar(True).disable  # --quiet, --json, and every rank but 0
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert progress_bar(False).disable  # piped into a file or another program
