# GPT-2 124M on OpenWebText with Sophia-G: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_sophiag.py config/train_gpt2_small_sophiag.py
include("parts/gpt2_small.py")   # model, data, batch, schedule

out_dir = "out-gpt2-small-sophiag"
wandb_run_name = "gpt2-small-sophiag"

optimizer_name = "sophiag"
# learning rate, betas, weight decay, rho: optimizers.py's OPTIMIZER_DEFAULTS["sophiag"] (the GPT-2 small values)
# min_lr: 0.05 x peak here; upstream's config used 1.5e-5.
