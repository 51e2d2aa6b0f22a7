# GPT-2 774M on OpenWebText with Sophia-G: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_large_sophiag.py
include("parts/gpt2_large.py")   # model, data, batch, schedule

out_dir = "out-gpt2-large-sophiag"
wandb_run_name = "gpt2-large-sophiag"

optimizer_name = "sophiag"
# betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"]; this size's own:
learning_rate = 3e-4
# min_lr: 0.05 x peak here; upstream's config used 1e-5.
