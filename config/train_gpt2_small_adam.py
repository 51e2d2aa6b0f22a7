# GPT-2 124M on OpenWebText with AdamW: the paper / upstream hyperparameters.
#   torchrun --standalone --nproc_per_node=8 train_adam.py config/train_gpt2_small_adam.py
include("parts/gpt2_small.py")   # model, data, batch, schedule

out_dir = "out-gpt2-small-adam"
wandb_run_name = "gpt2-small-adam"

optimizer_name = "adamw"
# learning rate, betas, weight decay: optimizers.py's OPTIMIZER_DEFAULTS["adamw"] (the GPT-2 small values)
# min_lr: 0.05 x peak here; upstream's config used 3e-5.
