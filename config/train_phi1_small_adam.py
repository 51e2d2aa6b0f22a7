# phi-1-small (350M) on OpenWebText with AdamW, the baseline of train_phi1_small_sophiag.py.
#   torchrun --standalone --nproc_per_node=8 train_adam.py config/train_phi1_small_adam.py
include("parts/phi1_small.py")   # model, data, batch, schedule

out_dir = "out-phi1-small-adam"
wandb_run_name = "phi1-small-adam"

optimizer_name = "adamw"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["adamw"]; lr as GPT-2 medium (355M), not tuned here
learning_rate = 3e-4
