# GPT-2 1.5B on OpenWebText with Sophia-H (DDP only: its double backward does not run under FSDP).
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2_xl_sophiah.py
include("parts/gpt2_xl.py")   # model, data, batch, schedule

out_dir = "out-gpt2-xl-sophiah"
wandb_run_name = "gpt2-xl-sophiah"

optimizer_name = "sophiah"
# betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiah"]; this size's own, chosen here as for
# Sophia-G at this size (774M's 3e-4 scaled by 0.8)
learning_rate = 2.4e-4
# the Hutchinson pass's double backward needs more memory per sequence than training (see
# train_gpt2_small_sophiah.py): one sequence per Hessian micro-batch, the same estimate
hess_batch_size = 1
# DDP holds the whole state on every GPU (25 GB at 16 bytes per parameter): 80 GB GPUs, micro-batches of 2
batch_size = 2
