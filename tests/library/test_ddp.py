"""DDP: the trainers (a distillation run's too) under torchrun with 2 CPU processes (gloo) keep the replicas equal, see
different data, only rank 0 writes checkpoints, the processes draw a distillation pool in turns that equals one
process's, and a signal to one process stops both at the same step with rank 0's checkpoint of it."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

import gencore
from gencore.testing import assert_equal
from gencore.training import DistillConfig, DistillTrainer

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    import torch.distributed as dist
    import gencore
    from gencore.data import load_digits
    from gencore.training import (DDPMConfig, DDPMTrainer, DistillConfig, DistillTrainer, GANConfig, WGANGPConfig,
                                  GANTrainer, WGANGPTrainer, TrainingInterrupted)
    from gencore.training.checkpoint import save_tensors

    out = sys.argv[1]
    gencore.set_backend("reference")
    data = load_digits().subset(64)
    common = dict(steps=3, batch_size=8, progress=False, log_every=1)
    trainers = {
        "ddpm": DDPMTrainer(data, DDPMConfig(unet=dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                                       attention_levels=(), norm_groups=4), **common,
                                             out_dir=os.path.join(out, "ddpm"), sample_steps=2, n_samples=2)),
        "gan": GANTrainer(data, GANConfig(features=8, ema_decay=0.9, **common)),
        "wgan": WGANGPTrainer(data, WGANGPConfig(features=8, n_critic=2, **common)),
    }
    rank = dist.get_rank()
    for name in ("ddpm", "gan", "wgan", "distill"):
        t = trainers[name]
        first, _ = t.batch(0)
        t.train()
        tensors = {f"{role}.{k}": v for role, sd in t.state_dicts().items() for k, v in sd.items()
                   if v.is_floating_point()}
        tensors["first_batch"] = first
        save_tensors(os.path.join(out, f"{name}-rank{rank}.safetensors"), tensors)
        if name == "ddpm":  # a student of the DDPM just trained, the processes drawing the pool in turns
            trainers["distill"] = DistillTrainer(DistillConfig(
                teacher=os.path.join(out, "ddpm"), out_dir=os.path.join(out, "distill"), calls=2, pool=32,
                teacher_steps=4, n_samples=2, **common))

    # SIGTERM reaches rank 1 alone, during step 2: both processes stop after that step, rank 0 writes its checkpoint.
    class SignalledOnRank1(GANTrainer):
        def train_step(self, step):
            if step == 1 and rank == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().train_step(step)

    t = SignalledOnRank1(data, GANConfig(features=8, **{**common, "steps": 50}, out_dir=os.path.join(out, "signal")))
    try:
        t.train()
        result = "finished"
    except TrainingInterrupted as exc:
        result = {"signum": exc.signum, "step": exc.step, "checkpoint": exc.checkpoint}
    with open(os.path.join(out, f"signal-rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()
""")


def test_ddp_two_cpu_processes_keep_replicas_equal(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENCORE_BACKEND": "reference"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("ddpm", "gan", "wgan", "distill"):
        r0 = load_file(str(tmp_path / f"{name}-rank0.safetensors"))
        r1 = load_file(str(tmp_path / f"{name}-rank1.safetensors"))
        # The distributed sampler gives each process its own part of the data.
        assert not torch.equal(r0.pop("first_batch"), r1.pop("first_batch")), name
        assert r0.keys() == r1.keys()
        for k in r0:
            assert_equal(r1[k], r0[k], msg=f"{name}: {k} differs between replicas")
    # rank 0 alone wrote the checkpoint (and the same checkpoint resumes in a single process)
    assert (tmp_path / "ddpm" / "latest.json").is_file() and (tmp_path / "distill" / "latest.json").is_file()
    # the two processes drew every other batch of the pool: it is the pool one process draws (on one thread, as they
    # did: the teacher's ODE steps carry a convolution's thread-count rounding into the endpoints)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with gencore.use_backend("reference"):
            single = DistillTrainer(DistillConfig(teacher=str(tmp_path / "ddpm"), out_dir=str(tmp_path / "single"),
                                                  calls=2, pool=32, teacher_steps=4, steps=3, batch_size=8,
                                                  progress=False))
    finally:
        torch.set_num_threads(threads)
    assert_equal(load_file(str(tmp_path / "distill" / "trajectories.safetensors"))["states"], single.dataset.states)
    signalled = [json.loads((tmp_path / f"signal-rank{r}.json").read_text()) for r in (0, 1)]
    checkpoint = str(tmp_path / "signal" / "checkpoint-00000002")
    assert signalled == [{"signum": signal.SIGTERM, "step": 2, "checkpoint": checkpoint},
                         {"signum": signal.SIGTERM, "step": 2, "checkpoint": None}]
    assert json.loads((tmp_path / "signal" / "latest.json").read_text())["step"] == 2
