# GPT-2 355M on OpenWebText with Sophia-G: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_medium_sophiag.py
include("parts/gpt2_medium.py")   # model, data, batch, schedule

out_dir = "out-gpt2-medium-sophiag"
wandb_run_name = "gpt2-medium-sophiag"

optimizer_name = "sophiag"
# betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"]; this size's own:
learning_rate = 7e-4
rho = 0.08
# min_lr: 0.05 x peak here; upstream's config used 1e-5.
