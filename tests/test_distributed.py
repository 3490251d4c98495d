"""Two CPU processes with the gloo backend: the data-parallel path torchrun uses."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import make_slices
from toolkit.settings import TrainSettings
from toolkit.train.distributed import DistInfo, init_from_env
from toolkit.train.loop import train_generator
from toolkit.train.runlog import RunLog
from toolkit.train.sampling import make_sampler
from toolkit.train.seeding import seed_everything
from toolkit.types import DataSpec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from toolkit.registry import GENERATORS  # tests.conftest registered the toy plugins

    info = init_from_env("cpu")
    assert info.world_size == 2 and info.rank == rank
    data = make_slices(n_patients=2, size=16)
    cfg = TrainSettings(steps=4, batch_size=4, log_every=2, sample_every=100, checkpoint_every=100)
    # Synchronised, then (as a control) the same training with each rank on its own.
    for label, dist_info in (("sync", info), ("alone", DistInfo(rank, 1, rank))):
        seed_everything(100 + rank)  # different init per rank: the broadcast must fix it
        gen = GENERATORS.get("toy")(DataSpec(image_size=16), latent_dim=4)
        run_dir = os.path.join(out_dir, f"{label}{rank}")
        runlog = RunLog(run_dir, quiet=True)
        train_generator(gen, data, cfg, run_dir, runlog, make_sampler(gen, data), seed=0, progress=False,
                        dist_info=dist_info)
        runlog.close()
        torch.save({k: v.clone() for k, v in gen.net.state_dict().items()}, os.path.join(out_dir, f"{label}{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_training_keeps_ranks_in_step(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / f"{name}.pt", weights_only=True)  # noqa: E731
    w0, w1 = load("sync0"), load("sync1")
    for key in w0:
        assert torch.allclose(w0[key], w1[key], atol=1e-6), key
    # Only rank 0 writes metrics and checkpoints.
    assert (tmp_path / "sync0" / "metrics.jsonl").exists()
    assert not (tmp_path / "sync1" / "metrics.jsonl").exists()
    # The control: without broadcast and gradient averaging the ranks drift apart.
    a0, a1 = load("alone0"), load("alone1")
    assert any(not torch.allclose(a0[k], a1[k]) for k in a0)
