# phi-1-small (350M) on OpenWebText with Sophia-G.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_phi1_small_sophiag.py
include("parts/phi1_small.py")   # model, data, batch, schedule

out_dir = "out-phi1-small-sophiag"
wandb_run_name = "phi1-small-sophiag"

optimizer_name = "sophiag"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"]; lr and rho as GPT-2 medium (355M), the
# same size; not tuned for this architecture.
learning_rate = 7e-4
rho = 0.08
