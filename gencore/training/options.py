"""The trainers' and samplers' choices and the command line's default model, as plain data (no torch): the trainers
validate against these names, and `gencore --help` lists them without importing torch."""
from __future__ import annotations

# What `gencore train KIND` trains.
KINDS = ("ddpm", "gan", "wgan-gp", "cgan")

# Learning-rate schedules after the warm-up (TrainConfig.lr_schedule).
LR_SCHEDULES = ("constant", "cosine", "linear")

# DDPM training losses (DDPMConfig.loss_type; gencore.diffusion.training_loss's loss_type).
DDPM_LOSS_TYPES = ("l2", "l1", "huber")

# GAN losses and conditional discriminators (GANConfig.loss, GANConfig.discriminator).
GAN_LOSSES = ("bce", "non_saturating", "hinge")
DISCRIMINATORS = ("dcgan", "projection")

# The samplers of a trained model, and each one's default number of steps: DDPM ancestral sampling over every
# training timestep, DDIM, and DPM-Solver++ 2M, whose 20 steps land as close to the exact ODE solution as DDIM's 50
# (tests/library/test_dpm_solver.py; no Karras sigmas: they gain little on linear betas and hurt on cosine ones).
SAMPLERS = ("ddim", "dpm++", "ddpm")
DEFAULT_STEPS = {"ddim": 50, "dpm++": 20, "ddpm": 1000}

# `gencore distill`: the students' numbers of model calls per picture, and the ODE solvers whose trajectories they
# learn (gencore.training.distillation).
STUDENT_CALLS = (1, 2, 4, 8)
STUDENT_TEACHER_SAMPLERS = ("ddim", "dpm++")

# The UNet `gencore train ddpm` builds unless told otherwise, that of the MNIST recipes in docs/results.md (base 32,
# mults 1,2,2, one residual block a level, no attention, 8 groups). Library users choose their own (DDPMConfig.unet;
# gencore.models.UNet's defaults are its own).
CLI_UNET = {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "attention_levels": (),
            "norm_groups": 8, "dropout": 0.0, "time_embedding_norm": "default"}
